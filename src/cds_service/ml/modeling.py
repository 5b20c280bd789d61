"""The model: a from-scratch `transformers.BertModel` encoder over history and notes, with two heads.

Encoder (shared) -> [CLS] state -> diagnosis head; [CLS] state + mean embedding of the encounter's
known diagnoses -> medication head (the order hooks know the encounter's diagnoses).

Optional wide branch (`n_wide > 0`): a linear model over the whole history's bag of codes (the
logistic-regression baseline's features, `featurize.WideSpace`) whose logits are added to both heads.
Training fits it first and freezes it, so the encoder learns what counts alone cannot see (order,
recency, values, notes) as a residual on top of a calibrated linear offset; the encoder's window
can then stay short without losing old history. Each head keeps `residual_scale` x the encoder's residual,
a shrinkage toward the wide branch fitted on validation like the temperature (1 = all of it, 0 = the
logistic regression alone).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from transformers import BertConfig, BertModel

from cds_service.ml.features import MAX_AGE, MAX_VISITS, N_TIME_BUCKETS


@dataclass(frozen=True)
class Profile:
    hidden: int
    layers: int
    heads: int
    intermediate: int
    max_len: int
    note_tokens: int
    dropout: float = 0.1


PROFILES = {
    "tiny": Profile(hidden=32, layers=1, heads=2, intermediate=64, max_len=128, note_tokens=16),
    "cpu": Profile(hidden=128, layers=2, heads=4, intermediate=256, max_len=512, note_tokens=64),
    "gpu": Profile(hidden=256, layers=4, heads=8, intermediate=1024, max_len=1024, note_tokens=128),
}


@dataclass(frozen=True)
class ModelConfig:
    profile: str
    vocab_size: int  # the whole TokenSpace: codes, value bins, note pieces
    n_codes: int
    n_note_pieces: int
    n_diagnoses: int
    n_medications: int
    n_kinds: int = 9
    n_wide: int = 0  # columns of the wide branch; 0 = none

    @property
    def sizes(self) -> Profile:
        return PROFILES[self.profile]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ModelOutput:
    dx_logits: torch.Tensor  # (batch, n_diagnoses)
    med_logits: torch.Tensor  # (batch, n_medications)
    inputs_embeds: torch.Tensor  # (batch, seq, hidden): what attributions differentiate against
    wide_logits: torch.Tensor | None = None  # (batch, n_diagnoses + n_medications): the wide branch's share
    pooled: torch.Tensor | None = None  # (batch, hidden): the [CLS] representation (the familiarity guard's input)


class HistoryEncoderModel(nn.Module):
    residual_scale: torch.Tensor

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        p = config.sizes
        bert_config = BertConfig(
            vocab_size=config.vocab_size,
            hidden_size=p.hidden,
            num_hidden_layers=p.layers,
            num_attention_heads=p.heads,
            intermediate_size=p.intermediate,
            max_position_embeddings=p.max_len,
            type_vocab_size=config.n_kinds,
            hidden_dropout_prob=p.dropout,
            attention_probs_dropout_prob=p.dropout,
        )
        self.encoder = BertModel(bert_config, add_pooling_layer=False)
        self.age = nn.Embedding(MAX_AGE + 2, p.hidden)
        self.time = nn.Embedding(N_TIME_BUCKETS, p.hidden)
        self.visit = nn.Embedding(MAX_VISITS + 1, p.hidden)
        self.dx_head = nn.Linear(p.hidden, config.n_diagnoses)
        self.med_head = nn.Sequential(
            nn.Linear(2 * p.hidden, p.hidden), nn.GELU(), nn.Linear(p.hidden, config.n_medications)
        )
        n_labels = config.n_diagnoses + config.n_medications
        self.wide: nn.EmbeddingBag | None = None
        if config.n_wide:
            self.wide = nn.EmbeddingBag(config.n_wide, n_labels, mode="sum", padding_idx=0)
            nn.init.zeros_(self.wide.weight)
            self.wide_bias = nn.Parameter(torch.zeros(n_labels))
        # How much of the encoder's residual each head keeps (diagnosis, medication): fitted on validation
        # after training (calibration.json), 1 while training; not a weight, so not in the safetensors.
        self.register_buffer("residual_scale", torch.ones(2), persistent=False)

    @property
    def token_embeddings(self) -> nn.Embedding:
        return self.encoder.embeddings.word_embeddings

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Summed input embeddings (batch, seq, hidden), before position/type embeddings that BERT adds."""
        words = self.token_embeddings
        values = words(batch["value_ids"]) * (batch["value_ids"] > 0).unsqueeze(-1)
        summed: torch.Tensor = (
            words(batch["input_ids"])
            + values
            + self.age(batch["age_ids"])
            + self.time(batch["time_ids"])
            + self.visit(batch["visit_ids"])
        )
        return summed

    def forward(
        self, batch: dict[str, torch.Tensor], known_dx: torch.Tensor, inputs_embeds: torch.Tensor | None = None
    ) -> ModelOutput:
        """`known_dx`: (batch, k) code ids of the encounter's known diagnoses, 0-padded."""
        embeds = self.embed(batch) if inputs_embeds is None else inputs_embeds
        hidden = self.encoder(
            inputs_embeds=embeds, attention_mask=batch["attention_mask"], token_type_ids=batch["token_type_ids"]
        ).last_hidden_state
        cls = hidden[:, 0]  # (batch, hidden)
        mask = (known_dx > 0).unsqueeze(-1).float()
        known = (self.token_embeddings(known_dx) * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        dx, med = self.dx_head(cls), self.med_head(torch.cat([cls, known], dim=-1))
        wide = self.wide_logits(batch)
        if wide is None:
            return ModelOutput(dx, med, embeds, pooled=cls)
        n_dx = self.config.n_diagnoses
        dx, med = self.residual_scale[0] * dx, self.residual_scale[1] * med
        return ModelOutput(dx + wide[:, :n_dx], med + wide[:, n_dx:], embeds, wide, pooled=cls)

    def wide_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        if self.wide is None:
            return None
        out: torch.Tensor = self.wide(batch["wide_ids"], per_sample_weights=batch["wide_values"]) + self.wide_bias
        return out


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
