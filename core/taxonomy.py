"""The class hierarchy: each class's ancestors at named ranks (finest first), read from a taxonomy CSV named in
`taxalens.toml` or from the manifest's taxonomy columns, validated, with lowest-common-ancestor helpers."""

from __future__ import annotations

import csv
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from core.dataset import unneutralise_cell
from core.errors import TaxaLensError

if TYPE_CHECKING:
    from core.dataset import Dataset
    from core.workspace import Workspace

logger = logging.getLogger(__name__)

CLASS_LEVEL = "class"  # the name of level 0 (the model's classes themselves)


class TaxonomyError(TaxaLensError, ValueError):
    """A taxonomy that cannot be used: a class with two parents at one rank, a gap below a known rank, a model class
    missing from it; the message names the class, the rank and the fix."""


@dataclass(frozen=True)
class Taxonomy:
    """Each class's ancestors at `ranks`, finest first (e.g. genus, family, order).

    Levels number the tree from the leaves: level 0 is the class itself, level `i` is `ranks[i - 1]`, and level
    `len(ranks) + 1` is the root above the coarsest rank. An ancestor may be unknown ("") only at the top: a class
    with a known family has a known genus. An unknown ancestor is a group of its own (named after the nearest known
    group below it, e.g. "Volvox (no order)"), so two classes never share an unknown ancestor. One parent per rank:
    two classes in one genus are in one family.
    """

    ranks: tuple[str, ...]  # rank names above the class, finest first
    ancestors: Mapping[str, tuple[str, ...]]  # class -> its ancestor at each rank ("" = unknown), same length as ranks
    source: str = ""  # where it was read from, for messages

    @property
    def levels(self) -> tuple[str, ...]:
        """Level names: "class" then the ranks, finest first."""
        return (CLASS_LEVEL, *self.ranks)

    @property
    def root_level(self) -> int:
        """The hierarchical distance of two classes with no common ancestor at any rank (`len(ranks) + 1`)."""
        return len(self.ranks) + 1

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.ancestors)

    def level_of(self, rank: str | int) -> int:
        """The level number of `rank` (a rank name, "class", or a level number)."""
        if isinstance(rank, int | np.integer):
            if not 0 <= int(rank) <= len(self.ranks):
                raise TaxonomyError(f"level {rank} is out of range; this taxonomy has levels 0..{len(self.ranks)} "
                                    f"({', '.join(self.levels)})")
            return int(rank)
        if rank not in self.levels:
            raise TaxonomyError(f"no rank {rank!r} in the taxonomy {self.source or ''}; known: {list(self.levels)}")
        return self.levels.index(rank)

    def group_of(self, class_name: str, rank: str | int) -> str:
        """The group `class_name` belongs to at `rank`: its ancestor, or a placeholder when that is unknown."""
        level = self.level_of(rank)
        if level == 0:
            return class_name
        chain = self.ancestors[class_name]
        value = chain[level - 1]
        if value:
            return value
        below = next((chain[i] for i in range(level - 2, -1, -1) if chain[i]), class_name)
        return f"{below} (no {self.ranks[level - 1]})"

    def lineage(self, class_name: str) -> tuple[str, ...]:
        """The groups of `class_name` at every level, class first."""
        return tuple(self.group_of(class_name, level) for level in range(len(self.levels)))

    def missing_classes(self, class_names: Sequence[str]) -> tuple[str, ...]:
        """The names of `class_names` the taxonomy does not place, in the given order."""
        return tuple(c for c in class_names if c not in self.ancestors)

    def require_classes(self, class_names: Sequence[str]) -> None:
        """Raise `TaxonomyError` naming every class of `class_names` (a model's classes) that the taxonomy lacks."""
        missing = self.missing_classes(class_names)
        if missing:
            shown = ", ".join(repr(c) for c in missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10
                                                                 else "")
            raise TaxonomyError(
                f"the taxonomy {self.source} does not place {len(missing)} of the model's classes: {shown}; add one "
                f"row per class (`class,{','.join(self.ranks)}`), leaving unknown top ranks blank")

    def taxonomic_order(self, class_names: Sequence[str]) -> np.ndarray:
        """A permutation of `class_names` indices grouping the classes by their coarsest rank first, then finer
        ranks, then name, so every group at every rank is one contiguous block."""
        self.require_classes(class_names)
        keys = [tuple(reversed(self.lineage(c))) for c in class_names]
        return np.array(sorted(range(len(class_names)), key=lambda i: keys[i]), dtype=np.int64)

    def groups(self, class_names: Sequence[str], rank: str | int) -> tuple[np.ndarray, tuple[str, ...]]:
        """(codes, group names): `codes[k]` indexes the group of `class_names[k]` at `rank` in `group names`.

        Groups are in taxonomic order (see `taxonomic_order`), so their blocks at coarser ranks are contiguous.
        """
        level = self.level_of(rank)
        order = self.taxonomic_order(class_names)
        names: list[str] = []
        position: dict[str, int] = {}
        codes = np.empty(len(class_names), dtype=np.int64)
        for k in order:
            group = self.group_of(class_names[k], level)
            if group not in position:
                position[group] = len(names)
                names.append(group)
            codes[k] = position[group]
        return codes, tuple(names)

    def level_codes(self, class_names: Sequence[str]) -> np.ndarray:
        """`(L, K)` int: row `l` holds each class's group code at level `l` (`L = len(ranks) + 1`)."""
        return np.stack([self.groups(class_names, level)[0] for level in range(len(self.levels))])

    def lca_levels(self, class_names: Sequence[str]) -> np.ndarray:
        """`(K, K)` int: the level of the lowest common ancestor of each pair of `class_names` (0 on the diagonal,
        `root_level` when they share no rank). This is the hierarchical distance (LCA height) of the pair."""
        codes = self.level_codes(class_names)
        k = len(class_names)
        out = np.full((k, k), self.root_level, dtype=np.int64)
        for level in range(codes.shape[0] - 1, -1, -1):  # coarse to fine: the finest shared level wins
            same = codes[level][:, None] == codes[level][None, :]
            out[same] = level
        return out

    def lca_level(self, a: str, b: str) -> int:
        """The level of the lowest common ancestor of classes `a` and `b` (their hierarchical distance)."""
        for level, (group_a, group_b) in enumerate(zip(self.lineage(a), self.lineage(b), strict=True)):
            if group_a == group_b:
                return level
        return self.root_level

    def lca_rank(self, a: str, b: str) -> str:
        """The rank name of the lowest common ancestor of `a` and `b`: "class" when equal, "root" when none."""
        return self.level_name(self.lca_level(a, b))

    def level_name(self, level: int) -> str:
        """"class", a rank name, or "root" for `root_level`."""
        return "root" if level == self.root_level else self.levels[level]

    def parent_blocks(self, group_names: Sequence[str], rank: str | int) -> list[tuple[str, int, int]]:
        """For groups at `rank` (in the order given), the runs of consecutive groups sharing a parent at the next
        rank up: (parent, first position, last position + 1). Empty at the coarsest rank."""
        level = self.level_of(rank)
        if level >= len(self.ranks):
            return []
        parent: dict[str, str] = {}
        for name in self.ancestors:
            parent.setdefault(self.group_of(name, level), self.group_of(name, level + 1))
        blocks: list[tuple[str, int, int]] = []
        for position, group in enumerate(group_names):
            up = parent.get(group, "")
            if blocks and blocks[-1][0] == up and blocks[-1][2] == position:
                blocks[-1] = (up, blocks[-1][1], position + 1)
            else:
                blocks.append((up, position, position + 1))
        return blocks


# ----------------------------------------------------------------------------------------------------------------
# Reading


def build_taxonomy(
    ranks: Sequence[str],
    rows: Sequence[tuple[str, Sequence[str]]],
    *,
    source: str = "",
) -> Taxonomy:
    """Validate `(class, ancestors finest first)` rows and return the taxonomy; a class may repeat with the same
    ancestors. Raises `TaxonomyError` naming the class (and where it was read) for every rule broken."""
    ranks = tuple(str(r).strip() for r in ranks)
    where = f" in {source}" if source else ""
    if not ranks:
        raise TaxonomyError(f"the taxonomy{where} has no rank columns; give `class,<finest rank>,...,<coarsest rank>`")
    if len(set(ranks)) != len(ranks) or CLASS_LEVEL in ranks or "" in ranks:
        raise TaxonomyError(f"the taxonomy{where} has rank names {list(ranks)}; they must be distinct, non-empty and "
                            f"not {CLASS_LEVEL!r}")
    ancestors: dict[str, tuple[str, ...]] = {}
    for class_name, chain in rows:
        chain = tuple(str(v).strip() for v in chain)
        if not class_name:
            raise TaxonomyError(f"a row{where} has an empty class name (ancestors {list(chain)}); fill it or drop it")
        if len(chain) != len(ranks):
            raise TaxonomyError(f"class {class_name!r}{where} has {len(chain)} ancestors for {len(ranks)} ranks")
        previous = ancestors.get(class_name)
        if previous is not None and previous != chain:
            rank = next(r for r, a, b in zip(ranks, previous, chain, strict=True) if a != b)
            a, b = previous[ranks.index(rank)], chain[ranks.index(rank)]
            raise TaxonomyError(f"class {class_name!r} has two parents at rank {rank!r}{where}: {a!r} and {b!r}; "
                                "a class has one parent per rank — correct the rows of this class")
        for finer, coarser in zip(range(len(ranks) - 1), range(1, len(ranks)), strict=True):
            if not chain[finer] and chain[coarser]:
                raise TaxonomyError(
                    f"class {class_name!r}{where} has {ranks[coarser]} {chain[coarser]!r} but no {ranks[finer]}; "
                    "unknown ranks may be left blank only at the top (the coarsest ranks)")
        ancestors[class_name] = chain
    taxonomy = Taxonomy(ranks=ranks, ancestors=ancestors, source=source)
    _check_one_parent(taxonomy)
    return taxonomy


def _check_one_parent(taxonomy: Taxonomy) -> None:
    """Every group at a rank has one parent at the next rank up (a genus sits in one family)."""
    for level in range(1, len(taxonomy.ranks)):
        parents: dict[str, dict[str, list[str]]] = {}
        for name in taxonomy.ancestors:
            group, up = taxonomy.group_of(name, level), taxonomy.ancestors[name][level]
            parents.setdefault(group, {}).setdefault(up, []).append(name)
        for group, by_parent in parents.items():
            if len(by_parent) > 1:
                rank, up_rank = taxonomy.ranks[level - 1], taxonomy.ranks[level]
                listed = "; ".join(f"{p or '(blank)'!r} (class {', '.join(map(repr, c[:3]))})"
                                   for p, c in sorted(by_parent.items()))
                raise TaxonomyError(
                    f"{rank} {group!r} has {len(by_parent)} parents at rank {up_rank!r}"
                    f"{' in ' + taxonomy.source if taxonomy.source else ''}: {listed}; one parent per rank — give "
                    f"these classes the same {up_rank}, or distinct {rank} names if they are different taxa")


def read_taxonomy_csv(path: str | Path) -> Taxonomy:
    """Read a taxonomy file: a header `class,<finest rank>,...,<coarsest rank>` (any rank names; the first column
    holds the class names whatever its name), then one row per class. Blank cells are unknown ranks."""
    path = Path(path)
    if not path.is_file():
        raise TaxonomyError(f"taxonomy file {path} not found; set `taxonomy` in [dataset] of taxalens.toml to a CSV "
                            "`class,<finest rank>,...` or to a list of manifest columns")
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            table = [row for row in csv.reader(handle) if any(cell.strip() for cell in row)]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise TaxonomyError(f"taxonomy file {path} is not a UTF-8 CSV: {exc}") from exc
    if len(table) < 2:
        raise TaxonomyError(f"taxonomy file {path} has no rows; expected a header `class,<finest rank>,...` and one "
                            "row per class")
    header = [cell.strip() for cell in table[0]]
    rows = []
    for number, row in enumerate(table[1:], start=2):
        if len(row) > len(header):
            raise TaxonomyError(f"taxonomy file {path} row {number} has {len(row)} cells for {len(header)} columns")
        cells = [str(unneutralise_cell(cell.strip())) for cell in row] + [""] * (len(header) - len(row))
        rows.append((cells[0], cells[1:]))
    return build_taxonomy(header[1:], rows, source=str(path))


def taxonomy_from_samples(samples: pd.DataFrame, columns: Sequence[str], *, source: str = "") -> Taxonomy:
    """The taxonomy in manifest `columns` (broadest first, as `[dataset] taxonomy` lists them) of `samples`.

    Raises `TaxonomyError` naming a class whose samples carry two values in one column.
    """
    columns = list(columns)
    absent = [c for c in columns if c not in samples.columns]
    if absent:
        raise TaxonomyError(f"taxonomy column(s) {absent} are not in the dataset; it has {list(samples.columns)}")
    ranks = list(reversed(columns))
    source = source or f"manifest columns {columns}"
    rows = samples[["label", *ranks]].astype(str).drop_duplicates()
    conflicted = rows["label"].duplicated(keep=False)
    if conflicted.any():
        label = rows.loc[conflicted, "label"].iloc[0]
        mine = samples[samples["label"] == label]
        for rank in ranks:
            counts = mine[rank].astype(str).value_counts()
            if len(counts) > 1:
                listed = ", ".join(f"{v!r} ({n} rows)" for v, n in counts.items())
                raise TaxonomyError(f"class {label!r} has two parents at rank {rank!r} in the {source}: {listed}; a "
                                    "class has one parent per rank — correct the manifest rows of this class")
    return build_taxonomy(ranks, [(label, tuple(row)) for label, *row in rows.itertuples(index=False)],
                          source=source)


def load_taxonomy(workspace: Workspace, dataset: Dataset) -> Taxonomy | None:
    """The workspace's taxonomy: the file `[dataset] taxonomy = "taxonomy.csv"` names, else the dataset's taxonomy
    columns, else None (no taxonomy)."""
    if workspace.taxonomy_file is not None:
        return read_taxonomy_csv(workspace.taxonomy_file)
    if dataset.taxonomy_columns:
        return taxonomy_from_samples(dataset.samples, dataset.taxonomy_columns)
    return None
