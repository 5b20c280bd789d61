"""SentencePiece tokenizer for clinical note text, trained on training-split notes only."""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from pathlib import Path

import sentencepiece as spm

NOTE_MODEL_FILE = "notes.model"


def _lines(notes: Iterable[str], max_lines: int) -> Iterator[str]:
    count = 0
    for note in notes:
        for line in note.splitlines():
            line = line.strip()
            if line:
                yield line
                count += 1
                if count >= max_lines:
                    return


def train_note_tokenizer(notes: Iterable[str], out_dir: Path, vocab_size: int = 4000) -> Path:
    """Train a unigram model; the vocabulary shrinks on its own when the corpus is small."""
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=_lines(notes, max_lines=300_000),
        model_writer=buffer,
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        model_type="unigram",
        character_coverage=1.0,
        pad_id=0,
        unk_id=1,
        bos_id=-1,
        eos_id=-1,
        num_threads=2,
        minloglevel=2,
    )
    path = out_dir / NOTE_MODEL_FILE
    path.write_bytes(buffer.getvalue())
    return path


class NoteTokenizer:
    def __init__(self, model_path: Path) -> None:
        self._sp = spm.SentencePieceProcessor(model_file=str(model_path))

    @property
    def vocab_size(self) -> int:
        return int(self._sp.get_piece_size())

    def encode(self, text: str, max_pieces: int) -> list[int]:
        return list(self._sp.encode(text, out_type=int))[:max_pieces]

    def piece(self, piece_id: int) -> str:
        return str(self._sp.id_to_piece(piece_id))

    def decode(self, piece_ids: list[int]) -> str:
        return str(self._sp.decode([int(i) for i in piece_ids]))
