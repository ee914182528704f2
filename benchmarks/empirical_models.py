"""Models of ``benchmarks/empirical_ntk.py --models resnet18 transformer lstm`` (issue 15).

- ``resnet18``: a ResNet-18-shaped CNN for 3×32×32 inputs (BasicBlocks [2, 2, 2, 2] of
  widths 64-128-256-512, BatchNorm in eval mode with non-trivial running statistics, global
  average pooling, 10 outputs; 11.2 M parameters);
- ``transformer``: token ids (vocabulary 1000, sequence 64) with an attention mask, as a
  dict input → embedding + learned positions → 4-layer ``nn.TransformerEncoder`` (d_model
  128, 4 heads, feed-forward 512, dropout 0) → masked mean → 10 logits, returned in a
  ``ModelOutput``-like dict (``output_fn="logits"``);
- ``lstm``: ``nn.LSTM`` (32 input features, hidden 256, sequence 50) → last hidden state →
  10 outputs.

Each builder returns ``(model, inputs, output_fn)`` for ``n`` examples, seeded.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn


class Logits(OrderedDict):
    """A dict whose keys are also attributes (like Hugging Face's ``ModelOutput``)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError as err:
            raise AttributeError(name) from err


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.short = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.short = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(h)) + self.short(x))


class ResNet18(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        blocks, c = [], 64
        for width, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            blocks += [BasicBlock(c, width, stride), BasicBlock(width, width, 1)]
            c = width
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(512, classes)

    def forward(self, x):
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


class TokenClassifier(nn.Module):
    def __init__(self, vocab=1000, d=128, heads=4, layers=4, seq=64, classes=10) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(0.02 * torch.randn(seq, d))
        layer = nn.TransformerEncoderLayer(d, heads, 4 * d, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, classes)

    def forward(self, input_ids, attention_mask):
        h = self.encoder(self.embed(input_ids) + self.pos, src_key_padding_mask=attention_mask == 0)
        m = attention_mask[..., None].to(h.dtype)
        return Logits(logits=self.head((h * m).sum(1) / m.sum(1)))


class LSTMClassifier(nn.Module):
    def __init__(self, features=32, hidden=256, classes=10) -> None:
        super().__init__()
        self.rnn = nn.LSTM(features, hidden, batch_first=True)
        self.out = nn.Linear(hidden, classes)

    def forward(self, x):
        h, _ = self.rnn(x)
        return self.out(h[:, -1])


def build(name: str, n: int, dtype: torch.dtype):
    """``(model, inputs, output_fn)`` of ``n`` examples (seeded)."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    if name == "resnet18":
        model = ResNet18()
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
        return model.to(dtype).eval(), torch.randn(n, 3, 32, 32, generator=g, dtype=dtype), None
    if name == "transformer":
        ids = torch.randint(0, 1000, (n, 64), generator=g)
        mask = torch.ones(n, 64, dtype=torch.long)
        lengths = torch.randint(32, 65, (n,), generator=g)
        mask[torch.arange(64)[None, :] >= lengths[:, None]] = 0
        model = TokenClassifier().to(dtype).eval()
        return model, {"input_ids": ids, "attention_mask": mask}, "logits"
    if name == "lstm":
        return LSTMClassifier().to(dtype).eval(), torch.randn(n, 50, 32, generator=g, dtype=dtype), None
    raise ValueError(name)
