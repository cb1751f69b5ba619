#!/usr/bin/env python3
"""An independent oracle for `upcycle import`: a tiny random GPT-2 in Hugging Face's layout
(config.json + model.safetensors, written here with numpy), its loss on some tokens computed
by a numpy GPT-2 that follows transformers' modeling_gpt2 (Conv1D x @ W + b with W [in, out],
c_attn split into q, k, v, causal softmax attention scaled by 1/sqrt(head size), gelu_new,
LayerNorm eps 1e-5, head tied to wte), and the CLI's `import` + `eval --tokens` on the same
files. Also: llm.c's .bin of the same weights imports to the same loss, and `export --format hf`
writes back exactly the tensors transformers would load.

Run by ctest with UPCYCLE_BIN set; exits 77 (skipped) when numpy is missing."""
import json
import os
import struct
import subprocess
import sys
import tempfile

try:
    import numpy as np
except ImportError:
    print("numpy is not installed (Debian: python3-numpy): skipped")
    sys.exit(77)

V, T, C, L, H = 97, 16, 32, 2, 4  # vocabulary (odd, as GPT-2's 50257), context, channels, ...
WINDOWS = 6


def hf_weights(rng):
    """GPT2LMHeadModel's state dict (names with "transformer."), Conv1D weights [in, out]."""
    w = {}

    def normal(*shape, std=0.2):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    p = "transformer."
    w[p + "wte.weight"] = normal(V, C)
    w[p + "wpe.weight"] = normal(T, C)
    for i in range(L):
        h = f"{p}h.{i}."
        w[h + "ln_1.weight"] = 1 + normal(C)
        w[h + "ln_1.bias"] = normal(C)
        w[h + "attn.c_attn.weight"] = normal(C, 3 * C)
        w[h + "attn.c_attn.bias"] = normal(3 * C)
        w[h + "attn.c_proj.weight"] = normal(C, C)
        w[h + "attn.c_proj.bias"] = normal(C)
        w[h + "ln_2.weight"] = 1 + normal(C)
        w[h + "ln_2.bias"] = normal(C)
        w[h + "mlp.c_fc.weight"] = normal(C, 4 * C)
        w[h + "mlp.c_fc.bias"] = normal(4 * C)
        w[h + "mlp.c_proj.weight"] = normal(4 * C, C)
        w[h + "mlp.c_proj.bias"] = normal(C)
    w[p + "ln_f.weight"] = 1 + normal(C)
    w[p + "ln_f.bias"] = normal(C)
    return w


def write_safetensors(path, tensors):
    """The safetensors format: u64 little-endian header length, JSON header, raw data."""
    header, offset, blobs = {}, 0, []
    for name, array in tensors.items():
        data = np.ascontiguousarray(array, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    header["__metadata__"] = {"format": "pt"}
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        assert entry["dtype"] == "F32", entry
        begin, end = entry["data_offsets"]
        out[name] = np.frombuffer(data[begin:end], dtype="<f4").reshape(entry["shape"])
    return out


def write_hf_folder(folder, w):
    os.makedirs(folder)
    config = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": V,
              "n_positions": T, "n_ctx": T, "n_embd": C, "n_layer": L, "n_head": H,
              "n_inner": None, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
              "tie_word_embeddings": True}
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f)
    tensors = dict(w)
    tensors["lm_head.weight"] = w["transformer.wte.weight"]  # tied: equal
    write_safetensors(os.path.join(folder, "model.safetensors"), tensors)


def write_llmc_model(path, w, Vp=128):
    """llm.c's gpt2_*.bin, version 3: header, then its tensors in nn.Linear layout [out, in]
    (llm.c's train_gpt2.py transposes transformers' Conv1D weights on load)."""
    header = np.zeros(256, dtype="<i4")
    header[:8] = [20240326, 3, T, V, L, H, C, Vp]
    p = "transformer."
    layer = lambda name, transpose: [  # noqa: E731
        (w[f"{p}h.{i}.{name}"].T if transpose else w[f"{p}h.{i}.{name}"]) for i in range(L)]
    wte = np.zeros((Vp, C), dtype=np.float32)
    wte[:V] = w[p + "wte.weight"]
    parts = [wte, w[p + "wpe.weight"]]
    for name, transpose in [("ln_1.weight", False), ("ln_1.bias", False),
                            ("attn.c_attn.weight", True), ("attn.c_attn.bias", False),
                            ("attn.c_proj.weight", True), ("attn.c_proj.bias", False),
                            ("ln_2.weight", False), ("ln_2.bias", False),
                            ("mlp.c_fc.weight", True), ("mlp.c_fc.bias", False),
                            ("mlp.c_proj.weight", True), ("mlp.c_proj.bias", False)]:
        parts += layer(name, transpose)
    parts += [w[p + "ln_f.weight"], w[p + "ln_f.bias"]]
    with open(path, "wb") as f:
        f.write(header.tobytes())
        for part in parts:
            f.write(np.ascontiguousarray(part, dtype="<f4").tobytes())


def write_token_shard(path, tokens):
    """llm.c's dev/data write_datafile: 256 int32 header (magic, version, count), uint16s."""
    header = np.zeros(256, dtype="<i4")
    header[:3] = [20240520, 1, len(tokens)]
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(np.asarray(tokens, dtype="<u2").tobytes())


def layer_norm(x, weight, bias, eps=1e-5):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def gelu_new(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def gpt2_logits(w, ids):
    """transformers' GPT2LMHeadModel forward for one sequence, in float64: [T] → [T, V]."""
    w = {k: v.astype(np.float64) for k, v in w.items()}
    p = "transformer."
    n = len(ids)
    x = w[p + "wte.weight"][ids] + w[p + "wpe.weight"][np.arange(n)]
    hd = C // H
    causal = np.tril(np.ones((n, n), dtype=bool))
    for i in range(L):
        h = f"{p}h.{i}."
        a = layer_norm(x, w[h + "ln_1.weight"], w[h + "ln_1.bias"])
        qkv = a @ w[h + "attn.c_attn.weight"] + w[h + "attn.c_attn.bias"]  # Conv1D
        q, k, v = np.split(qkv, 3, axis=-1)
        q, k, v = (t.reshape(n, H, hd).transpose(1, 0, 2) for t in (q, k, v))  # [H, T, hd]
        scores = q @ k.transpose(0, 2, 1) / np.sqrt(hd)
        scores = np.where(causal, scores, -np.inf)
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        probs = scores / scores.sum(-1, keepdims=True)
        y = (probs @ v).transpose(1, 0, 2).reshape(n, C)
        x = x + y @ w[h + "attn.c_proj.weight"] + w[h + "attn.c_proj.bias"]
        m = layer_norm(x, w[h + "ln_2.weight"], w[h + "ln_2.bias"])
        m = gelu_new(m @ w[h + "mlp.c_fc.weight"] + w[h + "mlp.c_fc.bias"])
        x = x + m @ w[h + "mlp.c_proj.weight"] + w[h + "mlp.c_proj.bias"]
    x = layer_norm(x, w[p + "ln_f.weight"], w[p + "ln_f.bias"])
    return x @ w[p + "wte.weight"].T  # tied head


def reference(w, tokens):
    """Mean next-token cross-entropy and accuracy over windows of T+1 tokens every T tokens."""
    losses, correct = [], 0
    for start in range(0, len(tokens) - T, T):
        window = tokens[start:start + T + 1]
        logits = gpt2_logits(w, window[:-1])
        top = logits.max(-1, keepdims=True)
        log_probs = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
        targets = window[1:]
        losses.extend(-log_probs[np.arange(T), targets])
        correct += int((logits.argmax(-1) == targets).sum())
    return float(np.mean(losses)), correct / len(losses), len(losses)


def sample_tokens(w, rng):
    """WINDOWS·T + 1 tokens, every other one the reference's greedy choice within its window
    (so accuracy is far from 0 and a wrong argmax shows), the others random."""
    tokens = [int(rng.integers(0, V))]
    for position in range(1, WINDOWS * T + 1):
        start = (position - 1) // T * T  # the window that predicts this position
        if position % 2:
            tokens.append(int(gpt2_logits(w, tokens[start:position])[-1].argmax()))
        else:
            tokens.append(int(rng.integers(0, V)))
    return np.array(tokens)


def cli(*args):
    binary = os.environ.get("UPCYCLE_BIN")
    if not binary:
        sys.exit("UPCYCLE_BIN is not set (run through ctest)")
    result = subprocess.run([binary, *args], capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"upcycle {' '.join(args)} failed ({result.returncode}):\n"
                 f"{result.stdout}{result.stderr}")
    return result.stdout


def evaluate(checkpoint, shard):
    return json.loads(cli("eval", "--ckpt", checkpoint, "--tokens", shard, "--json"))


def main():
    rng = np.random.default_rng(2024)
    w = hf_weights(rng)
    tokens = sample_tokens(w, rng)
    want_loss, want_accuracy, predictions = reference(w, tokens)
    failures = []

    with tempfile.TemporaryDirectory(prefix="upcycle_oracle_") as tmp:
        hf_dir = os.path.join(tmp, "gpt2-tiny")
        write_hf_folder(hf_dir, w)
        shard = os.path.join(tmp, "val_000000.bin")
        write_token_shard(shard, tokens)

        hf_ckpt = os.path.join(tmp, "hf.safetensors")
        cli("import", "--format", "hf", "--in", hf_dir, "--out", hf_ckpt, "--sunk-tokens", "1e6")
        got = evaluate(hf_ckpt, shard)
        print(f"reference loss {want_loss:.7f} accuracy {want_accuracy:.4f} over {predictions} "
              f"tokens; imported: loss {got['val_loss']:.7f} accuracy {got['val_accuracy']:.4f} "
              f"over {got['tokens']}")
        if got["tokens"] != predictions:
            failures.append(f"evaluated {got['tokens']} tokens, the reference {predictions}")
        if abs(got["val_loss"] - want_loss) > 1e-5:
            failures.append(f"loss {got['val_loss']} != reference {want_loss}")
        # argmax may flip on a near tie in fp32: at most one prediction's worth
        if abs(got["val_accuracy"] - want_accuracy) > 1.0 / predictions + 1e-12:
            failures.append(f"accuracy {got['val_accuracy']} != reference {want_accuracy}")

        llmc_path = os.path.join(tmp, "gpt2_tiny.bin")
        write_llmc_model(llmc_path, w)
        llmc_ckpt = os.path.join(tmp, "llmc.safetensors")
        cli("import", "--format", "llmc", "--in", llmc_path, "--out", llmc_ckpt,
            "--sunk-flops", "1e15")
        llmc = evaluate(llmc_ckpt, shard)
        if llmc["val_loss"] != got["val_loss"]:
            failures.append(f"llm.c import loss {llmc['val_loss']} != HF import {got['val_loss']}")

        exported = os.path.join(tmp, "exported")
        cli("export", "--ckpt", hf_ckpt, "--format", "hf", "--out", exported)
        back = read_safetensors(os.path.join(exported, "model.safetensors"))
        with open(os.path.join(exported, "config.json")) as f:
            config = json.load(f)
        for key, value in [("vocab_size", V), ("n_positions", T), ("n_embd", C),
                           ("n_layer", L), ("n_head", H)]:
            if config.get(key) != value:
                failures.append(f"exported config.json {key} = {config.get(key)}, expected {value}")
        if set(back) != set(w):
            failures.append(f"exported tensors differ in names: {sorted(set(back) ^ set(w))}")
        for name in set(back) & set(w):
            if back[name].shape != w[name].shape or not np.array_equal(back[name], w[name]):
                failures.append(f"exported {name} differs from the original")

    for failure in failures:
        print("FAIL:", failure)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
