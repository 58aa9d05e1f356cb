#!/usr/bin/env python3
"""PyTorch reference copies of mckd's two MCKD training steps, for timing (issue 5).

Same layer shapes, parameter counts, losses, optimisers, batch sizes and thread count as the
Rust side (`crates/mckd-bench`, which drives `mckd_core::MckdTrainer`):

* AV-MNIST (`crates/mckd-avmnist/src/model.rs`): image encoder Conv2d(1,20,5)-BN-ReLU-MaxPool2
  -Conv2d(20,50,5)-BN-ReLU-MaxPool2-Linear(800,128)-BN1d-ReLU-Dropout(0.5); audio encoder
  Conv2d(1,32,3,p1)-BN-ReLU-MaxPool2-Conv2d(32,64,3,p1)-BN-ReLU-MaxPool2-Linear(1600,128)-BN1d
  -ReLU-Dropout(0.5); head Linear(256,64)-ReLU-Dropout(0.5)-Linear(64,10). 369,784 parameters.
  Inner step: zero missing inputs, encode, mean-impute missing features, concatenate, head,
  cross-entropy + 0.1 * CKD (L1, pairwise, teacher and weight ratio detached); Adam(lr 1e-3,
  eps 1e-8, weight_decay 1e-2). Meta step: eval mode, encoders without gradient, features scaled
  by softmax(w), head, cross-entropy, backward to w only, the IWV's own Adam (lr 1e-2, eps 1e-8,
  weight_decay 1e-2).
* BraTS 3D UNet (`crates/mckd-brats/src/model.rs`), base width c: shared encoder run once per
  modality, blocks Conv3d(3,p1)-InstanceNorm3d(affine)-LeakyReLU(0.01) x2, ConvTranspose3d(2,s2)
  upsampling, fusion by concatenation at every level, 1x1x1 head to 3 logits; 7935c^2+169c+3
  parameters. Inner step: Dice + BCE-with-logits + 0.1 * CKD at the bottleneck; SGD lr 1e-2,
  Nesterov momentum 0.99.

Prints one JSON line per step kind (same fields as `mckd-bench`).
"""

import argparse
import json
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


# ---------------------------------------------------------------------------------------------
# The method (mckd-core): imputation, CKD loss, masks
# ---------------------------------------------------------------------------------------------


def impute(f, mask):
    """f [B, N, F], mask [B, N] -> missing features replaced by the mean of the present ones."""
    m = mask[:, :, None]
    present = f * m
    count = m.sum(1, keepdim=True).clamp_min(1.0)
    mean = present.sum(1, keepdim=True) / count
    return present + mean * (1.0 - m)


def ckd_loss(f, mask, w):
    """Sum over ordered pairs (teacher i, student j), i != j, of (w_i/w_j) * mean|f_i - f_j|,
    averaged over the samples where both are present; teacher and ratio detached."""
    b, n, _ = f.shape
    teacher = f.detach()[:, :, None, :]
    student = f[:, None, :, :]
    dist = (teacher - student).abs().mean(3)  # [B, teacher, student]
    off = 1.0 - torch.eye(n)
    pair = mask[:, :, None] * mask[:, None, :] * off[None]
    count = pair.sum(0)
    per_pair = (dist * pair).sum(0) / count.clamp_min(1.0)
    wd = w.detach()
    ratio = wd[:, None] / wd.clamp_min(1e-6)[None, :]
    return (per_pair * ratio).sum()


def reference_masks(rng, b, n):
    """Per sample: k uniform in 1..n present modalities, a uniform subset of size k."""
    out = np.zeros((b, n), dtype=np.float32)
    for i in range(b):
        k = rng.integers(1, n + 1)
        out[i, rng.permutation(n)[:k]] = 1.0
    return torch.from_numpy(out)


# ---------------------------------------------------------------------------------------------
# AV-MNIST
# ---------------------------------------------------------------------------------------------


class ImageEncoder(nn.Module):
    def __init__(self, f=128):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 20, 5), nn.BatchNorm2d(20)
        self.conv2, self.bn2 = nn.Conv2d(20, 50, 5), nn.BatchNorm2d(50)
        self.fc, self.bn_fc = nn.Linear(800, f), nn.BatchNorm1d(f)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):  # [B, 1, 28, 28] -> [B, F]
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)  # [B, 20, 12, 12]
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)  # [B, 50, 4, 4]
        return self.drop(F.relu(self.bn_fc(self.fc(x.flatten(1)))))


class AudioEncoder(nn.Module):
    def __init__(self, f=128):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32)
        self.conv2, self.bn2 = nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64)
        self.fc, self.bn_fc = nn.Linear(1600, f), nn.BatchNorm1d(f)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):  # [B, 1, 20, 20] -> [B, F]
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)  # [B, 32, 10, 10]
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)  # [B, 64, 5, 5]
        return self.drop(F.relu(self.bn_fc(self.fc(x.flatten(1)))))


class AvmnistNet(nn.Module):
    def __init__(self, f=128, hidden=64):
        super().__init__()
        self.image, self.audio = ImageEncoder(f), AudioEncoder(f)
        self.fc1, self.fc2 = nn.Linear(2 * f, hidden), nn.Linear(hidden, 10)
        self.drop = nn.Dropout(0.5)

    def encode_all(self, image, audio, mask):  # -> [B, 2, F]
        b = mask.shape[0]
        fi = self.image(image * mask[:, 0].view(b, 1, 1, 1))
        fa = self.audio(audio * mask[:, 1].view(b, 1, 1, 1))
        return torch.stack([fi, fa], 1)

    def head(self, fused):
        return self.fc2(self.drop(F.relu(self.fc1(fused))))


class AvmnistMckd:
    def __init__(self, seed):
        torch.manual_seed(seed)
        self.net = AvmnistNet()
        self.iwv = nn.Parameter(torch.rand(2))
        self.opt = torch.optim.Adam(self.net.parameters(), lr=1e-3, eps=1e-8, weight_decay=1e-2)
        self.iwv_opt = torch.optim.Adam([self.iwv], lr=1e-2, eps=1e-8, weight_decay=1e-2)

    def inner_step(self, batch, mask, alpha=0.1):
        image, audio, labels = batch
        b = labels.shape[0]
        feats = self.net.encode_all(image, audio, mask)
        logits = self.net.head(impute(feats, mask).reshape(b, -1))
        task = F.cross_entropy(logits, labels)
        ckd = ckd_loss(feats, mask, torch.softmax(self.iwv, 0))
        loss = task + alpha * ckd
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return task.item(), ckd.item()

    def meta_step(self, batch):
        image, audio, labels = batch
        b = labels.shape[0]
        self.net.eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        with torch.no_grad():
            feats = self.net.encode_all(image, audio, torch.ones(b, 2))
        w = torch.softmax(self.iwv, 0)
        logits = self.net.head((feats * w[None, :, None]).reshape(b, -1))
        loss = F.cross_entropy(logits, labels)
        self.iwv_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.iwv_opt.step()
        for p in self.net.parameters():
            p.requires_grad_(True)
        self.net.train()
        return loss.item()


def avmnist_batch(gen, b):
    return (
        torch.rand(b, 1, 28, 28, generator=gen) * 2 - 1,
        torch.rand(b, 1, 20, 20, generator=gen) * 2 - 1,
        torch.arange(b) % 10,
    )


def bench_avmnist(a):
    warmup = 3 if a.warmup is None else a.warmup
    steps = 20 if a.steps is None else max(1, a.steps)
    b = a.avmnist_batch
    m = AvmnistMckd(a.seed)
    params = sum(p.numel() for p in m.net.parameters())
    gen = torch.Generator().manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    batch, meta_batch = avmnist_batch(gen, b), avmnist_batch(gen, b)
    ones = torch.ones(b, 2)
    times = {"inner_all": [], "inner_random": [], "meta": []}
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        m.inner_step(batch, ones)
        t1 = time.perf_counter()
        masks = reference_masks(rng, b, 2)
        t2 = time.perf_counter()
        m.inner_step(batch, masks)
        t3 = time.perf_counter()
        m.meta_step(meta_batch)
        t4 = time.perf_counter()
        if i >= warmup:
            times["inner_all"].append((t1 - t0) * 1e3)
            times["inner_random"].append((t3 - t2) * 1e3)
            times["meta"].append((t4 - t3) * 1e3)
    return [series(a, "avmnist", k, b, params, warmup, v) for k, v in times.items()]


# ---------------------------------------------------------------------------------------------
# BraTS 3D UNet
# ---------------------------------------------------------------------------------------------


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv3d(cin, cout, 3, stride=stride, padding=1)
        self.norm1 = nn.InstanceNorm3d(cout, affine=True)
        self.conv2 = nn.Conv3d(cout, cout, 3, padding=1)
        self.norm2 = nn.InstanceNorm3d(cout, affine=True)

    def forward(self, x):
        x = F.leaky_relu(self.norm1(self.conv1(x)), 0.01)
        return F.leaky_relu(self.norm2(self.conv2(x)), 0.01)


class UNet(nn.Module):
    def __init__(self, c, n=4):
        super().__init__()
        self.c, self.n = c, n
        self.e1, self.e2 = Block(1, c, 1), Block(c, 2 * c, 2)
        self.e3, self.e4 = Block(2 * c, 4 * c, 2), Block(4 * c, 8 * c, 2)
        self.up3 = nn.ConvTranspose3d(n * 8 * c, 4 * c, 2, stride=2)
        self.d3 = Block(4 * c + n * 4 * c, 4 * c, 1)
        self.up2 = nn.ConvTranspose3d(4 * c, 2 * c, 2, stride=2)
        self.d2 = Block(2 * c + n * 2 * c, 2 * c, 1)
        self.up1 = nn.ConvTranspose3d(2 * c, c, 2, stride=2)
        self.d1 = Block(c + n * c, c, 1)
        self.head = nn.Conv3d(c, 3, 1)

    def encoder(self, x):
        e1 = self.e1(x)
        e2 = self.e2(e1)
        e3 = self.e3(e2)
        return [e1, e2, e3, self.e4(e3)]

    def encode_all(self, images, mask):
        """Per level [B, N, C*D*H*W] (the Rust side flattens and stacks the same way)."""
        b = mask.shape[0]
        per_mod = [
            self.encoder(images[m] * mask[:, m].view(b, 1, 1, 1, 1)) for m in range(self.n)
        ]
        return [torch.stack([pm[l].flatten(1) for pm in per_mod], 1) for l in range(4)]

    def decode(self, fused, spatial):
        """fused[l]: [B, N*F_l] modality-major -> reshape is channel concatenation."""
        b = fused[0].shape[0]
        f = [
            t.reshape(b, self.n * (self.c << l), *[s >> l for s in spatial])
            for l, t in enumerate(fused)
        ]
        x = self.d3(torch.cat([self.up3(f[3]), f[2]], 1))
        x = self.d2(torch.cat([self.up2(x), f[1]], 1))
        x = self.d1(torch.cat([self.up1(x), f[0]], 1))
        return self.head(x)


def segmentation_loss(logits, targets):
    """mean_c soft Dice(1 - 2*sum pg/(sum p + sum g + 1)) + sum_c BCE-with-logits (mean)."""
    c = logits.shape[1]
    x = logits.transpose(0, 1).reshape(c, -1)
    y = targets.transpose(0, 1).reshape(c, -1)
    p = torch.sigmoid(x)
    dice = 1.0 - 2.0 * (p * y).sum(1) / (p.sum(1) + y.sum(1) + 1.0)
    bce = F.binary_cross_entropy_with_logits(x, y, reduction="none").mean(1)
    return dice.mean() + bce.sum()


class UNetMckd:
    def __init__(self, c, seed):
        torch.manual_seed(seed)
        self.net = UNet(c)
        self.iwv = nn.Parameter(torch.rand(4))
        self.opt = torch.optim.SGD(self.net.parameters(), lr=1e-2, momentum=0.99, nesterov=True)

    def inner_step(self, images, targets, mask, alpha=0.1):
        b = mask.shape[0]
        spatial = images[0].shape[2:]
        feats = self.net.encode_all(images, mask)
        fused = [impute(f, mask).reshape(b, -1) for f in feats]
        task = segmentation_loss(self.net.decode(fused, spatial), targets)
        ckd = ckd_loss(feats[3], mask, torch.softmax(self.iwv, 0))
        loss = task + alpha * ckd
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return task.item(), ckd.item()


def bench_unet(a):
    warmup = 1 if a.warmup is None else a.warmup
    steps = 3 if a.steps is None else max(1, a.steps)
    b, s, c = a.unet_batch, a.crop, a.base
    m = UNetMckd(c, a.seed)
    params = sum(p.numel() for p in m.net.parameters())
    gen = torch.Generator().manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    images = [torch.rand(b, 1, s, s, s, generator=gen) * 2 - 1 for _ in range(4)]
    targets = (torch.rand(b, 3, s, s, s, generator=gen) < 0.1).float()
    times = []
    for i in range(warmup + steps):
        masks = reference_masks(rng, b, 4)
        t0 = time.perf_counter()
        m.inner_step(images, targets, masks)
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1e3)
    return [series(a, "unet", "inner_random", b, params, warmup, times)]


# ---------------------------------------------------------------------------------------------


def peak_rss_mib():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmHWM in /proc/self/status")


def series(a, model, step, b, params, warmup, times):
    return {
        "side": "torch",
        "model": model,
        "step": step,
        "batch": b,
        "threads": a.threads,
        "params": params,
        "warmup": warmup,
        "times_ms": times,
        "median_ms": float(np.median(times)),
        "min_ms": float(min(times)),
        "max_ms": float(max(times)),
        "torch": torch.__version__,
        "simd": a.simd,
        "torch_isa": torch.backends.cpu.get_cpu_capability(),
    }


def sgemm_gflops(threads, n=2048, reps=10):
    """Achieved fp32 GEMM GFLOP/s of PyTorch's BLAS (MKL) at this thread count."""
    x, y = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        x @ y
    t = []
    for _ in range(reps):
        t0 = time.perf_counter()
        x @ y
        t.append(time.perf_counter() - t0)
    return 2 * n**3 / float(np.median(t)) / 1e9


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=["avmnist", "unet", "sgemm"], required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int)
    p.add_argument("--steps", type=int)
    p.add_argument("--avmnist-batch", type=int, default=64)
    p.add_argument("--unet-batch", type=int, default=2)
    p.add_argument("--crop", type=int, default=64)
    p.add_argument("--base", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--simd", default="", help="our kernels' path this run is compared with (a label)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if a.model == "sgemm":
        print(json.dumps({"side": "torch", "model": "sgemm", "threads": a.threads,
                          "gflops": sgemm_gflops(a.threads), "simd": a.simd,
                          "torch_isa": torch.backends.cpu.get_cpu_capability()}))
        return
    out = bench_avmnist(a) if a.model == "avmnist" else bench_unet(a)
    rss = peak_rss_mib()
    for s in out:
        s["peak_rss_mib"] = rss
        print(json.dumps(s), flush=True)


if __name__ == "__main__":
    main()
