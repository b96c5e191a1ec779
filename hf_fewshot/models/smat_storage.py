"""SMAT's experts in a saved folder, stored as what they are after training (docs/smat.md, "Checkpoints").

Once trained, almost every gate is exactly 0 or 1 and most delta elements lie where every expert is closed, so the
dense banks (`delta` `[N]` and `gate_logits` `[M, N]` in float32) mostly hold what the model never uses. The compact
form keeps:

- `codes` `[N]`: bit m set where expert m's gate is exactly 1 (uint8 for M ≤ 8, then int16, int32, int64);
- `fractional_index` `[F]` and `fractional_logits` `[M, F]`: the elements where some gate is neither 0 nor 1, with
  their log α as they are;
- `delta_values` `[K]`: θ_δ at the elements some expert opens or a fractional gate reaches, in element order.

Decoding writes `gate_logit_max` for an open gate and `gate_logit_min` for a closed one. An element is coded only if
each of its gates is 0 in every gate the model computes (eval gates, training gates at both ends of their noise) or 1
in every one of them, and the two values are themselves saturated there: so the reloaded model has the same eval and
training gates, and the same eval model, bit for bit. The rest of θ_δ has mixed gate 0 whatever the router does; it
reloads as 0.

A same-folder module of modeling_smat.py: remote code copies it beside the model; it imports nothing from hf_fewshot.
"""

import hashlib
import os
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .smat_gates import GateSettings

EXPERTS_FILE = "smat_experts.safetensors"
FORMAT_VERSION = "1"
_CODE_DTYPES = ((8, torch.uint8), (15, torch.int16), (31, torch.int32), (63, torch.int64))


def gate_views(config) -> list[tuple[GateSettings, float]]:
    """`(settings, shift)` of every gate a model with this `SmatConfig` computes: the gate of `log α + shift`.

    The eval gates, and the training gates at the two ends of their noise band (`log α + logit(u)`, u as
    `GateSettings.noisy_chunks` draws it): a gate is monotone in `log α + shift`, so one saturated at both ends is
    saturated for every draw."""
    shared = dict(gamma=config.gate_gamma, zeta=config.gate_zeta, noise=0.0, seed=0, density_shift=0.0)
    eval_gates = GateSettings(beta=config.gate_beta_eval, **shared)
    train_gates = GateSettings(beta=config.gate_beta, **shared)
    if config.gate_noise == 0:
        return [(eval_gates, 0.0), (train_gates, 0.0)]
    ends = torch.tensor([0.0, 1.0 - 2.0**-24])  # the smallest and the largest float32 torch.rand draws
    u = (0.5 + config.gate_noise * (ends - 0.5)).clamp_(1e-6, 1 - 1e-6)
    return [(eval_gates, 0.0), *((train_gates, float(shift)) for shift in torch.logit(u))]


def _saturation(log_alpha: torch.Tensor, views) -> tuple[torch.Tensor, torch.Tensor]:
    """`(open, closed)` masks of `log_alpha`'s shape: gates exactly 1, resp. exactly 0, in every view."""
    opened = closed = None
    for settings, shift in views:
        gates = settings.gates(log_alpha + shift if shift else log_alpha)
        opened = gates == 1 if opened is None else opened & (gates == 1)
        closed = gates == 0 if closed is None else closed & (gates == 0)
    return opened, closed


@torch.no_grad()
def encode_experts(delta: torch.Tensor, log_alpha: torch.Tensor, config) -> dict[str, torch.Tensor] | None:
    """The compact tensors of the banks `delta` `[N]` and `log_alpha` `[M, N]`, or None where they would not be
    smaller than the dense ones (a bank still learning: many fractional gates), or could not be exact (more than 63
    experts; clamp bounds that are not themselves saturated gates)."""
    num_experts, num_elements = log_alpha.shape
    code_dtype = next((dtype for most, dtype in _CODE_DTYPES if num_experts <= most), None)
    if code_dtype is None:
        return None
    views = gate_views(config)
    bounds = log_alpha.new_tensor([[config.gate_logit_min, config.gate_logit_max]])
    opened, closed = _saturation(bounds, views)
    if not (closed[0, 0] and opened[0, 1]):
        return None
    bits = (2 ** torch.arange(num_experts, device=log_alpha.device, dtype=torch.int64)).unsqueeze(1)
    codes, fractional, needed = [], [], []
    settings = views[0][0]
    for columns in settings.column_chunks(num_elements):
        opened, closed = _saturation(log_alpha[:, columns], views)
        coded = (opened | closed).all(dim=0)
        chunk_codes = (opened * bits).sum(dim=0).masked_fill_(~coded, 0)
        codes.append(chunk_codes.to(code_dtype))
        fractional.append((~coded).nonzero().squeeze(1) + columns.start)
        needed.append((chunk_codes != 0) | ~coded)
    index_dtype = torch.int32 if num_elements < 2**31 else torch.int64
    fractional_index = torch.cat(fractional)
    compact = {
        "codes": torch.cat(codes),
        "fractional_index": fractional_index.to(index_dtype),
        "fractional_logits": log_alpha[:, fractional_index].contiguous(),
        "delta_values": delta[torch.cat(needed)].contiguous(),
    }
    dense_bytes = delta.nbytes + log_alpha.nbytes
    return compact if sum(t.nbytes for t in compact.values()) < dense_bytes else None


def decode_experts(
    compact: dict[str, torch.Tensor], num_experts: int, closed: float, opened: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(delta [N], log α [M, N])` from `encode_experts`' tensors; coded gates get the logits `closed` / `opened`."""
    codes, index = compact["codes"], compact["fractional_index"].long()
    fractional_logits, values = compact["fractional_logits"], compact["delta_values"]
    num_elements = len(codes)
    if codes.dim() != 1 or fractional_logits.shape != (num_experts, len(index)):
        raise ValueError(
            f"The compact experts hold codes {tuple(codes.shape)} and fractional logits "
            f"{tuple(fractional_logits.shape)} for {len(index)} elements; this model has {num_experts} experts."
        )
    log_alpha = torch.empty(num_experts, num_elements, dtype=fractional_logits.dtype)
    closed, opened = torch.tensor([closed, opened], dtype=log_alpha.dtype)
    for m in range(num_experts):
        torch.where(((codes >> m) & 1).bool(), opened, closed, out=log_alpha[m])
    log_alpha[:, index] = fractional_logits
    needed = codes != 0
    needed[index] = True
    if int(needed.sum()) != len(values):
        raise ValueError(f"The compact experts hold {len(values)} delta values for {int(needed.sum())} elements.")
    delta = values.new_zeros(num_elements)
    delta[needed] = values
    return delta, log_alpha


def experts_for_saving(
    state_dict: dict[str, torch.Tensor], config, compact: bool, include_backbone: bool
) -> tuple[dict[str, torch.Tensor], dict[str, str]] | None:
    """`(tensors, metadata)` of the experts file that goes with a save of `state_dict`, or None for the plain layout
    (every tensor in model.safetensors). The banks go there compactly where that is smaller (and `compact`), or as
    they are where the backbone is not stored, which the metadata then names by its checksum."""
    if not include_backbone and not config.backbone_name_or_path:
        raise ValueError(
            "include_backbone=False needs config.backbone_name_or_path (set by from_backbone) to load the backbone "
            "from; this model's backbone has no recorded source."
        )
    tensors = None
    if compact and "delta" in state_dict and "gate_logits" in state_dict:
        tensors = encode_experts(state_dict["delta"], state_dict["gate_logits"], config)
    if tensors is not None:
        metadata = {
            "experts": "compact",
            "gate_logit_closed": repr(float(config.gate_logit_min)),
            "gate_logit_open": repr(float(config.gate_logit_max)),
        }
    elif include_backbone:
        return None
    else:
        tensors, metadata = {key: state_dict[key] for key in ("delta", "gate_logits")}, {"experts": "dense"}
    if include_backbone:
        metadata["backbone"] = "stored"
    else:
        backbone = {key.removeprefix("backbone."): t for key, t in state_dict.items() if key.startswith("backbone.")}
        metadata.update(backbone="referenced", backbone_sha256=backbone_checksum(backbone))
    return tensors, metadata


def saved_separately(key: str, metadata: dict[str, str]) -> bool:
    """Whether a state-dict key is not in model.safetensors when the experts file has this metadata."""
    return key in ("delta", "gate_logits") or (metadata["backbone"] == "referenced" and key.startswith("backbone."))


def experts_state_dict(tensors: dict[str, torch.Tensor], metadata: dict[str, str], config) -> dict[str, torch.Tensor]:
    """`{"delta": ..., "gate_logits": ...}` from the experts file's tensors and metadata."""
    if metadata["experts"] == "dense":
        return {"delta": tensors["delta"], "gate_logits": tensors["gate_logits"]}
    closed, opened = float(metadata["gate_logit_closed"]), float(metadata["gate_logit_open"])
    delta, log_alpha = decode_experts(tensors, config.num_experts, closed, opened)
    return {"delta": delta, "gate_logits": log_alpha}


def backbone_checksum(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a backbone's state dict (names, dtypes, shapes and bytes, in name order)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def write_experts(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write the experts file whole or not at all: into a temporary sibling, then renamed onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, staging = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    os.close(descriptor)
    try:
        tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()}
        save_file(tensors, staging, metadata={"format": "pt", "version": FORMAT_VERSION, **metadata})
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o666 & ~umask)  # what a plain open() gives (mkstemp makes it 0600)
        os.replace(staging, path)
    finally:
        Path(staging).unlink(missing_ok=True)


def read_experts(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """`(tensors, metadata)` of an experts file."""
    with safe_open(str(path), framework="pt") as file:
        metadata = file.metadata() or {}
        if metadata.get("version") != FORMAT_VERSION:
            raise ValueError(f"{path} is not a version-{FORMAT_VERSION} SMAT experts file: {metadata}.")
        names = file.keys()
        return {name: file.get_tensor(name) for name in names}, metadata


__all__ = [
    "EXPERTS_FILE",
    "backbone_checksum",
    "decode_experts",
    "encode_experts",
    "experts_for_saving",
    "experts_state_dict",
    "gate_views",
    "read_experts",
    "saved_separately",
    "write_experts",
]
