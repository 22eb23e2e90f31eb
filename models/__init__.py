"""The model families (LeNet, CIFAR ResNet, CIFAR VGG) and the weight initializers.

Importing this package registers every family in `registries.models` and every
initializer in `registries.initializers`; the core never imports a model directly.
"""

from models import cifar_resnet, cifar_vgg, initializers, mnist_lenet  # noqa: F401
