"""The PyTorch reference for benches/gpu_step.rs: the same BERT-base-sized classifier (post-LN
encoder, exact GELU, mean pooling, a dense classifier; 12 layers, width 768, 12 heads, sequence 128,
batch 32, f32) and the same steps (plain; FGM on the word-embedding output, per-example L2 step of
radius 1, clean plus adversarial loss), timed the same way: loss and all weight gradients, no
optimiser update, methods alternating within rounds, medians over rounds.

Run on the GPU machine (PyTorch is installed there): python3 torch_step.py [--rounds N] [--layers N]
[--hidden N] [--batch N] [--seq N]. Prints the median ms and the ratio to plain.
"""

import argparse
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Layer(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.attention = nn.MultiheadAttention(d, heads, batch_first=True)
        self.attention_norm = nn.LayerNorm(d, eps=1e-12)
        self.up = nn.Linear(d, 4 * d)
        self.down = nn.Linear(4 * d, d)
        self.output_norm = nn.LayerNorm(d, eps=1e-12)

    def forward(self, h, key_padding):
        a, _ = self.attention(h, h, h, key_padding_mask=key_padding, need_weights=False)
        h = self.attention_norm(h + a)
        return self.output_norm(h + self.down(F.gelu(self.up(h))))


class Classifier(nn.Module):
    def __init__(self, layers, d, vocab=30522, positions=512, classes=2):
        super().__init__()
        self.word = nn.Embedding(vocab, d)
        self.position = nn.Embedding(positions, d)
        self.token_type = nn.Embedding(2, d)
        self.embedding_norm = nn.LayerNorm(d, eps=1e-12)
        self.layers = nn.ModuleList(Layer(d, max(d // 64, 1)) for _ in range(layers))
        self.classifier = nn.Linear(d, classes)

    def logits_from_embeddings(self, e, mask):
        n = e.shape[1]
        h = e + self.position.weight[:n] + self.token_type.weight[0]
        h = self.embedding_norm(h)
        for layer in self.layers:
            h = layer(h, mask == 0)
        m = mask.unsqueeze(2)
        return self.classifier((h * m).sum(1) / m.sum(1))


def main():
    p = argparse.ArgumentParser()
    for name, default in [("rounds", 10), ("layers", 12), ("hidden", 768), ("batch", 32), ("seq", 128)]:
        p.add_argument(f"--{name}", type=int, default=default)
    a = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "CPU"
    print(f"device: {name}; torch {torch.__version__}")
    torch.manual_seed(0)
    model = Classifier(a.layers, a.hidden).to(device).train()
    # Dropout is off in both implementations: the comparison is of the arithmetic.
    for m in model.modules():
        if isinstance(m, nn.MultiheadAttention):
            m.dropout = 0.0
    ids = torch.randint(1000, 21000, (a.batch, a.seq), device=device)
    mask = torch.ones(a.batch, a.seq, device=device)
    labels = torch.arange(a.batch, device=device) % 2

    def plain():
        model.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model.logits_from_embeddings(model.word(ids), mask), labels)
        loss.backward()
        return loss

    def fgm(eps=1.0):
        model.zero_grad(set_to_none=True)
        e = model.word(ids)
        e.retain_grad()
        clean = F.cross_entropy(model.logits_from_embeddings(e, mask), labels)
        clean.backward()
        g = e.grad.detach() * mask.unsqueeze(2)
        norm = g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1)
        delta = eps * g / norm
        adversarial = F.cross_entropy(model.logits_from_embeddings(model.word(ids) + delta, mask), labels)
        adversarial.backward()
        return clean + adversarial

    methods = {"plain": plain, "fgm": fgm}
    for f in methods.values():
        f().item()
    times = {k: [] for k in methods}
    keys = list(methods)
    for r in range(a.rounds):
        for k in range(len(keys)):
            key = keys[(r + k) % len(keys)]
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            methods[key]().item()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[key].append(time.perf_counter() - start)
    base = statistics.median(times["plain"])
    print(f"{'method':<18} {'median ms':>12} {'x plain':>10}")
    for key in keys:
        t = statistics.median(times[key])
        print(f"{key:<18} {1e3 * t:>12.2f} {t / base:>10.2f}")


if __name__ == "__main__":
    main()
