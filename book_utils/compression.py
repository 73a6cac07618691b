"""Making a model smaller and faster, measured (taught in chapter 5, "Compression and
serving").

- quantization (量化): dynamic int8 on every ``nn.Linear`` (:func:`quantize_int8`), half
  precision (:func:`cast`), and simulated per-channel or group-wise integer weights
  (:func:`quantize_weights`, :func:`fake_quantize`: the formats of GGUF files such as
  Q4_1), with the size of the saved weights (:func:`state_dict_bytes`), latency
  (:func:`median_latency`) and quality (:func:`evaluate_lm`: perplexity and next-token
  accuracy on held-out blocks);
- knowledge distillation (知识蒸馏): :func:`distillation_loss` (KL between
  temperature-softened teacher and student distributions, Hinton et al. 2015) and
  :func:`train_lm` that trains a student with or without a teacher;
- pruning (剪枝): :func:`magnitude_prune` zeroes the smallest weights;
  :func:`sparse_matmul_latency` checks whether the zeros make a CPU matrix product
  faster (dense kernels do not skip zeros);
- export (导出): :func:`export_onnx` writes an ONNX graph of the logits and
  :func:`onnx_session` runs it in onnxruntime.
"""

from __future__ import annotations

import copy
import io
import math
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from book_utils.decoding import synchronize
from book_utils.sft_data.masks import IGNORE_INDEX

# --- size, latency, quality -----------------------------------------------------------


def state_dict_bytes(model) -> int:
    """Bytes of ``torch.save(model.state_dict())``: what the weights cost on disk (tied
    weights counted once)."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def median_latency(fn, repeats: int = 5, warmup: int = 1) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls after ``warmup`` untimed calls
    (GPU work included)."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats!r}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        synchronize()
        start = time.perf_counter()
        fn()
        synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


@torch.no_grad()
def evaluate_lm(
    model,
    blocks: torch.Tensor,
    labels: torch.Tensor | None = None,
    batch_size: int = 16,
) -> dict:
    """Next-token quality on held-out token ``blocks`` ``(N, T+1)``:
    ``{"loss", "perplexity", "accuracy"}`` (mean NLL in nats, exp(loss), top-1
    next-token accuracy). ``labels`` (same shape, ``-100`` = not scored) restricts the
    score to some positions, e.g. the assistant's tokens of right-padded SFT
    conversations. Works for float, half and int8 models."""
    if blocks.dim() != 2 or blocks.shape[1] < 2:
        raise ValueError(
            "blocks must be (N, T+1) token ids with T >= 1, got shape "
            f"{tuple(blocks.shape)}"
        )
    labels = _check_labels(blocks, labels)
    was_training = model.training
    model.eval()
    nll, correct, count = 0.0, 0, 0
    device = next(model.parameters()).device
    for i in range(0, len(blocks), batch_size):
        logits = model(
            input_ids=blocks[i : i + batch_size, :-1].to(device), use_cache=False
        ).logits.float()
        targets = labels[i : i + batch_size, 1:].to(device)
        scored = targets != IGNORE_INDEX
        nll += F.cross_entropy(logits[scored], targets[scored], reduction="sum").item()
        correct += (logits[scored].argmax(-1) == targets[scored]).sum().item()
        count += int(scored.sum())
    model.train(was_training)
    if count == 0:
        raise ValueError("no position to score: every label is -100")
    return {
        "loss": nll / count,
        "perplexity": math.exp(nll / count),
        "accuracy": correct / count,
    }


def _check_labels(blocks: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """``labels`` or, when None, ``blocks`` themselves (every next token scored)."""
    if labels is None:
        return blocks
    if labels.shape != blocks.shape:
        raise ValueError(
            f"labels shape {tuple(labels.shape)} != blocks shape {tuple(blocks.shape)}"
        )
    return labels


# --- quantization ---------------------------------------------------------------------


def quantize_int8(model):
    """A copy of ``model`` with every ``nn.Linear`` replaced by a dynamically quantized
    int8 one.

    Weights are stored as int8 with one float scale per tensor; activations are
    quantized on the fly per batch (hence "dynamic") and the product runs in int8 with
    int32 accumulation (fbgemm/x86 kernels). Embeddings and norms stay float. Uses
    ``torch.ao.quantization.quantize_dynamic``, which torch 2.13 still ships but marks
    deprecated in favour of the separate ``torchao`` package
    (``quantize_(model, Int8DynamicActivationInt8WeightConfig())``); the warning is
    silenced here and the chapter says so. CPU only.
    """
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return quantize_dynamic(
            copy.deepcopy(model).cpu().eval(), {torch.nn.Linear}, dtype=torch.qint8
        )


def quantize_weights(
    weight: torch.Tensor,
    *,
    bits: int,
    group_size: int | None = None,
    asymmetric: bool = False,
) -> torch.Tensor:
    """``weight`` (out × in) rounded to ``bits``-bit integers and back to float: the
    error a weight format makes.

    One scale per output row (per-channel), or per group of ``group_size`` consecutive
    weights of a row. Symmetric: q = round(w / s) in [−(2^(b−1) − 1), 2^(b−1) − 1] with
    s = max|w| / (2^(b−1) − 1), w ≈ s·q. Asymmetric (min/max): q = round((w − m) / s) in
    [0, 2^b − 1] with m = min w, s = (max w − m) / (2^b − 1), w ≈ s·q + m; with
    ``bits=4, group_size=32`` this is llama.cpp's Q4_1 block format. Chapter 5.
    """
    if weight.dim() != 2:
        raise ValueError(
            f"weight must be a matrix (out x in), got shape {tuple(weight.shape)}"
        )
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 16:
        raise ValueError(f"bits must be an int in [2, 16], got {bits!r}")
    out_features, in_features = weight.shape
    group = in_features if group_size is None else group_size
    if (
        isinstance(group, bool)
        or not isinstance(group, int)
        or group < 1
        or in_features % group
    ):
        raise ValueError(
            f"group_size must divide the {in_features} inputs of a row, got "
            f"{group_size!r}"
        )
    w = weight.detach().float().reshape(out_features, in_features // group, group)
    if asymmetric:
        low, high = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
        scale = ((high - low) / (2**bits - 1)).clamp(min=1e-12)
        q = torch.clamp(torch.round((w - low) / scale), 0, 2**bits - 1)
        restored = q * scale + low
    else:
        top = 2 ** (bits - 1) - 1
        scale = (w.abs().amax(-1, keepdim=True) / top).clamp(min=1e-12)
        restored = torch.clamp(torch.round(w / scale), -top, top) * scale
    return restored.reshape(weight.shape).to(weight.dtype)


@torch.no_grad()
def fake_quantize(
    model, *, bits: int, group_size: int | None = None, asymmetric: bool = False
):
    """A copy of ``model`` whose Transformer-block linear weights went through
    :func:`quantize_weights` (simulated, "fake" quantization: the rounding error is
    real, the arithmetic stays float). It measures what a weight format costs in
    quality, not its speed. Embeddings and norms stay as they are. Chapter 5."""
    quantized = copy.deepcopy(model).eval()
    weights = prunable_weights(quantized)
    if not weights:
        raise ValueError("the model has no linear layers under 'layers.' to quantize")
    for w in weights.values():
        w.copy_(
            quantize_weights(w, bits=bits, group_size=group_size, asymmetric=asymmetric)
        )
    return quantized


def weight_bits(
    bits: int, group_size: int, asymmetric: bool = False, scale_bits: int = 16
) -> float:
    """Storage per weight of a group-wise format: the ``bits`` of the integer plus the
    group's scale (and its minimum, when ``asymmetric``) shared by ``group_size``
    weights. Q4_1: 4 + 2·16/32 = 5 bits."""
    return bits + (2 if asymmetric else 1) * scale_bits / group_size


def cast(model, dtype: torch.dtype):
    """A copy of ``model`` with floating-point weights in ``dtype`` (``torch.float16``
    or ``torch.bfloat16``)."""
    if dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"dtype must be float16, bfloat16 or float32, got {dtype!r}")
    return copy.deepcopy(model).to(dtype).eval()


# --- distillation ---------------------------------------------------------------------


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    targets: torch.Tensor,
    *,
    temperature: float = 2.0,
    alpha: float = 0.5,
) -> torch.Tensor:
    """``alpha · τ² · KL(p_teacher^τ ‖ p_student^τ) + (1 − alpha) · CE(student,
    targets)``, averaged over tokens.

    ``p^τ = softmax(z / τ)``: a temperature τ > 1 softens both distributions so the
    student also learns how the teacher ranks the *wrong* tokens ("dark knowledge"); τ²
    keeps the gradient scale independent of τ (Hinton et al. 2015). ``alpha=0`` (or no
    teacher) is plain training on hard labels. Logits ``(..., V)``, targets ``(...)``;
    positions whose target is ``-100`` (prompt and padding of an SFT batch) count in
    neither term.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    if teacher_logits is not None and teacher_logits.shape != student_logits.shape:
        raise ValueError(
            f"teacher logits {tuple(teacher_logits.shape)} != student logits "
            f"{tuple(student_logits.shape)}"
        )
    scored = targets != IGNORE_INDEX
    if not scored.any():
        raise ValueError("no position to train on: every target is -100")
    hard = F.cross_entropy(student_logits[scored], targets[scored])
    if teacher_logits is None or alpha == 0:
        return hard
    log_q = F.log_softmax(student_logits[scored] / temperature, dim=-1)
    log_p = F.log_softmax(teacher_logits[scored].float() / temperature, dim=-1)
    soft = (
        F.kl_div(log_q, log_p, log_target=True, reduction="batchmean") * temperature**2
    )
    return alpha * soft + (1 - alpha) * hard


def train_lm(
    student,
    blocks: torch.Tensor,
    *,
    labels: torch.Tensor | None = None,
    steps: int,
    batch_size: int = 16,
    lr: float = 3e-3,
    teacher=None,
    temperature: float = 2.0,
    alpha: float = 0.5,
    seed: int = 0,
    progress: bool = True,
) -> list[float]:
    """Train ``student`` (a causal LM) for ``steps`` AdamW steps on random batches of
    token ``blocks`` with :func:`distillation_loss` (hard labels only when ``teacher``
    is None); cosine learning-rate decay. ``labels`` (same shape as ``blocks``, ``-100``
    = not trained on) restricts the loss to some positions: right-padded SFT
    conversations train on the assistant's tokens only. Returns the loss per step. The
    same seed draws the same batches with or without a teacher."""
    from tqdm.auto import tqdm

    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps!r}")
    labels = _check_labels(blocks, labels)
    device = next(student.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps))
    )
    if teacher is not None:
        teacher.eval()
        teacher_device = next(teacher.parameters()).device
    student.train()
    losses = []
    for _ in tqdm(
        range(steps),
        desc="distil" if teacher is not None else "train",
        disable=not progress,
        leave=False,
    ):
        rows = torch.randint(0, len(blocks), (batch_size,), generator=gen)
        x, targets = blocks[rows, :-1].to(device), labels[rows, 1:].to(device)
        logits = student(input_ids=x, use_cache=False).logits
        # the teacher may live on another device (a GPU) than a small student
        with torch.no_grad():
            t_logits = (
                None
                if teacher is None
                else teacher(input_ids=x.to(teacher_device), use_cache=False).logits.to(
                    device
                )
            )
        loss = distillation_loss(
            logits, t_logits, targets, temperature=temperature, alpha=alpha
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    student.eval()
    return losses


# --- pruning --------------------------------------------------------------------------


def prunable_weights(model) -> dict[str, torch.nn.Parameter]:
    """The weight matrices of the Transformer blocks' linear layers (attention and MLP
    projections); the embedding (tied to the LM head in our model) and the norms are
    left alone."""
    return {
        name: module.weight
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and "layers." in name
    }


@torch.no_grad()
def magnitude_prune(model, sparsity: float):
    """A copy of ``model`` whose block linear weights have their smallest-|w| fraction
    ``sparsity`` set to zero, with one global threshold over all of them (unstructured
    magnitude pruning, Han et al. 2015)."""
    if not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity!r}")
    pruned = copy.deepcopy(model).eval()
    weights = prunable_weights(pruned)
    if not weights:
        raise ValueError("the model has no linear layers under 'layers.' to prune")
    if sparsity == 0:
        return pruned
    magnitudes = torch.cat([w.abs().flatten() for w in weights.values()])
    k = int(sparsity * magnitudes.numel())
    threshold = torch.kthvalue(magnitudes, k).values if k else magnitudes.min() - 1
    for w in weights.values():
        w.masked_fill_(w.abs() <= threshold, 0.0)
    return pruned


def weight_sparsity(model) -> float:
    """Fraction of exact zeros among :func:`prunable_weights`."""
    weights = list(prunable_weights(model).values())
    return sum((w == 0).sum().item() for w in weights) / sum(w.numel() for w in weights)


@torch.no_grad()
def sparse_matmul_latency(
    d_in: int,
    d_out: int,
    n_tokens: int,
    sparsity: float,
    repeats: int = 5,
    seed: int = 0,
):
    """Median seconds of ``x @ Wᵀ`` for ``x`` ``(n_tokens, d_in)`` and ``W``
    ``(d_out, d_in)`` with a fraction ``sparsity`` of zeros:
    ``{"dense": …, "sparse_csr": …}`` (the same W, stored dense or as CSR)."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(d_out, d_in, generator=gen)
    w[torch.rand(d_out, d_in, generator=gen) < sparsity] = 0.0
    x = torch.randn(n_tokens, d_in, generator=gen)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
        w_csr = w.to_sparse_csr()
    dense = median_latency(lambda: x @ w.T, repeats)
    sparse = median_latency(lambda: torch.sparse.mm(w_csr, x.T), repeats)
    torch.testing.assert_close(
        torch.sparse.mm(w_csr, x.T).T, x @ w.T, rtol=1e-4, atol=1e-4
    )
    return {"dense": dense, "sparse_csr": sparse}


# --- export ---------------------------------------------------------------------------


class LogitsOnly(torch.nn.Module):
    """Wrap a causal LM so ``forward(input_ids, attention_mask)`` returns only the
    logits (no cache): the graph that :func:`export_onnx` traces."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=False
        ).logits


def export_onnx(model, path: Path | str, example_length: int = 16) -> Path:
    """Export ``model``'s logits to an ONNX file at ``path`` with dynamic batch and
    sequence axes.

    Uses the TorchScript-based exporter (``dynamo=False``: seconds for our small model;
    the ``dynamo=True`` exporter, torch's default, also works but takes about half a
    minute here). Written atomically.
    """
    from book_utils.cache import atomic_write_bytes

    path = Path(path)
    ids = torch.randint(
        0,
        model.config.vocab_size,
        (2, example_length),
        generator=torch.Generator().manual_seed(0),
    )
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            LogitsOnly(copy.deepcopy(model).cpu().eval()),
            (ids, torch.ones_like(ids)),
            buffer,
            dynamo=False,
            input_names=["input_ids", "attention_mask"],
            output_names=["logits"],
            dynamic_axes={
                name: {0: "batch", 1: "sequence"}
                for name in ("input_ids", "attention_mask", "logits")
            },
            opset_version=17,
        )
    atomic_write_bytes(path, buffer.getvalue())
    return path


def onnx_session(path: Path | str, threads: int | None = None):
    """An onnxruntime CPU ``InferenceSession`` for ``path`` (``threads`` intra-op
    threads; default: torch's)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_logits(
    session, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Run an exported model: logits ``(B, T, V)`` as a torch tensor."""
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    feeds = {
        "input_ids": input_ids.cpu().numpy(),
        "attention_mask": attention_mask.cpu().numpy(),
    }
    return torch.from_numpy(session.run(["logits"], feeds)[0])
