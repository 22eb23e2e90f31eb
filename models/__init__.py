"""The model families (LeNet, CIFAR ResNet and VGG, ImageNet and Tiny ImageNet ResNets) and
the weight initializers.

Importing this package registers every family in `registries.models` and every
initializer in `registries.initializers`; the core never imports a model directly.
"""

if __name__ == "models":  # by its plain name: see open_lth/foundations/plain_names.py
    from open_lth.foundations.plain_names import step_aside

    step_aside(__name__, __file__)


from open_lth.models import (  # noqa: F401
    cifar_resnet,
    cifar_vgg,
    imagenet_resnet,
    initializers,
    mnist_lenet,
    tinyimagenet_resnet,
)
