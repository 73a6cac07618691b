"""Cleaning source items: normalisation, garbage and length filters, exact and
near-duplicate removal with MinHash over character 5-gram shingles and
locality-sensitive hashing (:func:`minhash_signatures`,
:func:`near_duplicate_clusters`), all combined in :func:`clean_items`.

Taught in chapter 4b, book/04_sft/03_sft_data.ipynb ("Cleaning", "Near duplicates").
"""

from __future__ import annotations

import re
import unicodedata
import zlib
from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np

from book_utils.sft_data.schema import MAX_CONTENT_CHARS, TEMPLATE_TOKENS


def normalize_text(text: str) -> str:
    """NFC-normalise, unify line ends and quotes, trim spaces at line ends and around
    the text."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = (
        text.replace("\u2019", "'")
        .replace("\u2018", "'")
        .replace("\u201c", '"')
        .replace("\u201d", '"')
    )
    text = re.sub(r"[ \t\u00a0]+", " ", text)
    return "\n".join(line.strip() for line in text.split("\n")).strip()


def garbage_reason(
    text, min_chars: int = 2, max_chars: int = MAX_CONTENT_CHARS
) -> str | None:
    """Why ``text`` should not become training data (``None`` = keep): empty, too short
    or long, control characters, template tokens, mostly non-letters, or one character
    repeated 8+ times ("!!!!!!!!")."""
    if not isinstance(text, str) or not text.strip():
        return "empty"
    if len(text) < min_chars:
        return "too short"
    if len(text) > max_chars:
        return "too long"
    if any(t in text for t in TEMPLATE_TOKENS):
        return "template token"
    if any(unicodedata.category(c) == "Cc" and c not in "\n\t" for c in text):
        return "control characters"
    letters = sum(c.isalpha() for c in text)
    if letters < 0.5 * len(re.sub(r"\s", "", text)):
        return "mostly non-letters"
    if re.search(r"(.)\1{7,}", text):
        return "repeated characters"
    return None


def exact_key(text: str) -> str:
    """The key two texts share when they are exact duplicates up to case, spacing and
    punctuation."""
    return re.sub(
        r"[^a-z0-9]+", " ", unicodedata.normalize("NFKC", text).lower()
    ).strip()


def shingles(text: str, k: int = 5) -> set[str]:
    """Character ``k``-grams of the :func:`exact_key` of ``text`` (the whole key when
    it is shorter than k)."""
    key = exact_key(text)
    return {key[i : i + k] for i in range(max(len(key) - k + 1, 1))}


def jaccard(a: set, b: set) -> float:
    """|A ∩ B| / |A ∪ B| (1.0 for two empty sets)."""
    return len(a & b) / len(a | b) if (a or b) else 1.0


def minhash_signatures(
    texts: Sequence[str], num_perm: int = 64, k: int = 5, seed: int = 0
) -> np.ndarray:
    """MinHash signatures, shape ``(len(texts), num_perm)`` (uint64), of the character
    k-gram sets.

    Each "permutation" is a random affine map h(x) = (a x + b) mod 2^64 of the
    shingle's CRC32, keeping the top 32 bits; the signature keeps the minimum per map.
    For two sets the probability that one coordinate agrees is their Jaccard
    similarity, so the fraction of agreeing coordinates estimates it.
    """
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 2**63, size=num_perm, dtype=np.uint64) | np.uint64(1)
    b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)
    out = np.empty((len(texts), num_perm), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for i, text in enumerate(texts):
            hashes = np.fromiter(
                (zlib.crc32(s.encode("utf-8")) for s in shingles(text, k)),
                dtype=np.uint64,
            )
            mapped = a[:, None] * hashes[None, :] + b[:, None]
            out[i] = (mapped >> np.uint64(32)).min(axis=1)
    return out


def near_duplicate_clusters(
    texts: Sequence[str],
    threshold: float = 0.7,
    num_perm: int = 64,
    bands: int = 16,
    k: int = 5,
    seed: int = 0,
) -> list[list[int]]:
    """Groups of indices whose texts are near duplicates (character 5-gram Jaccard >=
    ``threshold``).

    Locality-sensitive hashing (局部敏感哈希): the MinHash signature is cut into
    ``bands`` bands of ``num_perm / bands`` rows; texts that agree on a whole band
    become candidate pairs (probability 1 - (1 - J^r)^b for Jaccard J), and each
    candidate pair is confirmed with the exact Jaccard. Clusters are the connected
    components (union-find); only clusters of two or more are returned, sorted.
    """
    if num_perm % bands:
        raise ValueError(f"num_perm={num_perm} must be divisible by bands={bands}")
    rows = num_perm // bands
    signatures = minhash_signatures(texts, num_perm=num_perm, k=k, seed=seed)
    sets = [shingles(t, k) for t in texts]
    parent = list(range(len(texts)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    checked: set[tuple[int, int]] = set()
    for band in range(bands):
        buckets: dict[bytes, list[int]] = defaultdict(list)
        for i, sig in enumerate(signatures[:, band * rows : (band + 1) * rows]):
            buckets[sig.tobytes()].append(i)
        for members in buckets.values():
            for j in members[1:]:
                pair = (members[0], j)
                if pair in checked:
                    continue
                checked.add(pair)
                if jaccard(sets[pair[0]], sets[j]) >= threshold:
                    parent[find(j)] = find(pair[0])
            # compare within a bucket against its first member and consecutive
            # members (cheap, catches chains)
            for i, j in zip(members[1:], members[2:]):
                if (i, j) not in checked:
                    checked.add((i, j))
                    if jaccard(sets[i], sets[j]) >= threshold:
                        parent[find(j)] = find(i)
    groups: dict[int, list[int]] = defaultdict(list)
    for i in range(len(texts)):
        groups[find(i)].append(i)
    return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: g[0])


def clean_items(
    items: list[dict], *, min_chars: int, max_chars: int, threshold: float = 0.7
) -> tuple[list[dict], Counter]:
    """Filter and deduplicate source items (dicts with ``source_id`` and ``text``),
    keeping the first of each duplicate group in ``source_id`` order. Returns the kept
    items and a Counter of why the others went: a garbage reason
    (:func:`garbage_reason`), ``"exact duplicate"`` or ``"near duplicate"``."""
    removed: Counter = Counter()
    kept = []
    for item in sorted(items, key=lambda it: it["source_id"]):
        reason = garbage_reason(item["text"], min_chars=min_chars, max_chars=max_chars)
        if reason is None and any(not t.strip() for t in item.get("turns", ())):
            reason = "empty turn"
        if reason:
            removed[reason] += 1
        else:
            kept.append(item)
    unique, seen = [], set()
    for item in kept:
        key = exact_key(item["text"])
        if key in seen:
            removed["exact duplicate"] += 1
        else:
            seen.add(key)
            unique.append(item)
    clusters = near_duplicate_clusters(
        [it["text"] for it in unique], threshold=threshold
    )
    drop = {i for group in clusters for i in group[1:]}
    removed["near duplicate"] += len(drop)
    return [it for i, it in enumerate(unique) if i not in drop], removed
