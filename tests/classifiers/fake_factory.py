"""A local stand-in for ``torchvision.models.resnet18``-style factories (``fn(num_classes=N, **kwargs)``)."""
from torch import nn


def tiny_resnetish(num_classes: int, width: int = 4):
    net = nn.Module()
    net.conv1 = nn.Conv2d(3, width, 3, padding=1)
    net.layer1 = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
    net.fc = nn.Linear(width, num_classes)
    net.forward = lambda x: net.fc(net.layer1(net.conv1(x)).mean((2, 3)))
    return net


def not_a_module(num_classes: int):
    return "nope"
