"""Closed planar contours of a binary slice that give the slice back exactly.

    plane_polygons(plane) -> [float64 (n, 2) arrays of (i, j) pixel coordinates]

`plane` is a 2D boolean array indexed (i = column, j = row), the axis order of a volume slice.
Pixel (i, j) is the square [i - 0.5, i + 0.5] x [j - 0.5, j + 0.5], so its centre is (i, j).

The contours run along voxel edges (never through voxel centres), so every vertex is a voxel
corner (i +- 0.5, j +- 0.5) and no voxel centre lies on a contour: "centre inside" is never
ambiguous for a reader. Points where a straight run continues are dropped (collinear vertices).

Holes are encoded as keyholes: each hole is joined to the boundary around it by a cut of zero
width along a grid line (walked down and back up), so one polygon is one 4-connected foreground
component with all its holes, and the polygons of a slice have disjoint interiors. Reading them
back then gives the slice whether a reader combines a slice's polygons by XOR (even-odd across
polygons, as plastimatch `--xor-contours`, dcmrtstruct2nii and platipy do) or by union (as
plastimatch does by default, and planning systems that ignore nesting); an island inside a hole
is a polygon of its own. Within a polygon, even-odd and non-zero winding agree: outer boundaries
turn counter-clockwise in (i, j) (with i to the right and j up), holes clockwise. See
docs/design.md, "RT Structure Sets".

Diagonal neighbours (pixels touching at a corner only) belong to different polygons, which
touch at that corner (4-connectivity for the foreground); a hole touching the outside at a
corner is joined to the outer boundary at that corner. Neither changes any voxel centre's
reading.
"""
from __future__ import annotations

import numpy as np

# Directions of a boundary edge in corner coordinates (a, b): +a, +b, -a, -b. Edges are directed
# with the foreground on their left, so a left turn is direction + 1.
_DA = np.array([1, 0, -1, 0])
_DB = np.array([0, 1, 0, -1])


def _edges(plane: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(start vertex, direction) of every directed boundary edge. Corner (a, b) is the point
    (a - 0.5, b - 0.5) of the plane and has vertex id a * (rows + 1) + b."""
    n_cols, n_rows = plane.shape
    p = np.zeros((n_cols + 2, n_rows + 2), bool)
    p[1:-1, 1:-1] = plane
    stride = n_rows + 1
    # horizontal edges on line b, from corner a to a + 1: pixel (a, b - 1) on one side, (a, b) on the other
    below, above = p[1:-1, :-1], p[1:-1, 1:]
    a, b = np.nonzero(above & ~below)
    plus_a = a * stride + b
    a, b = np.nonzero(below & ~above)
    minus_a = (a + 1) * stride + b
    # vertical edges on line a, from corner b to b + 1: pixel (a - 1, b) on one side, (a, b) on the other
    left, right = p[:-1, 1:-1], p[1:, 1:-1]
    a, b = np.nonzero(left & ~right)
    plus_b = a * stride + b
    a, b = np.nonzero(right & ~left)
    minus_b = a * stride + b + 1
    starts = np.concatenate([plus_a, plus_b, minus_a, minus_b])
    dirs = np.repeat(np.arange(4), [len(plus_a), len(plus_b), len(minus_a), len(minus_b)])
    return starts, dirs


def _next_edges(starts: np.ndarray, dirs: np.ndarray, stride: int, n_vertices: int) -> np.ndarray:
    """The edge that follows each edge around its loop. At a saddle corner (two foreground
    pixels touching diagonally: two edges in, two out) the left turn is taken, which keeps to
    the same pixel: diagonal neighbours are not joined (4-connectivity)."""
    delta = np.array([stride, 1, -stride, -1])
    out = np.full((n_vertices, 4), -1, np.int64)
    out[starts, dirs] = np.arange(len(starts))
    ends = starts + delta[dirs]
    nxt = out[ends, (dirs + 1) % 4]
    for turn in (0, 3):  # elsewhere a corner has one edge out, whichever way it goes
        missing = nxt < 0
        nxt[missing] = out[ends[missing], (dirs[missing] + turn) % 4]
    return nxt


def _loops(nxt: np.ndarray) -> tuple[list[list[int]], np.ndarray]:
    """The cycles of the permutation `nxt`: edge indices in order, and each edge's loop."""
    following = nxt.tolist()
    loop_of = np.full(len(following), -1, np.int64)
    seen = bytearray(len(following))
    loops = []
    for first in range(len(following)):
        if seen[first]:
            continue
        path = []
        e = first
        while not seen[e]:
            seen[e] = 1
            path.append(e)
            e = following[e]
        loop_of[path] = len(loops)
        loops.append(path)
    return loops, loop_of


def _simplify(vertices: np.ndarray) -> np.ndarray:
    """(n, 2) integer corners of a closed path in unit steps (with repeats where a zero-length
    cut was walked) -> the corners where its direction changes."""
    keep = np.any(vertices != np.roll(vertices, 1, axis=0), axis=1)
    v = vertices[keep]
    step_in = np.sign(v - np.roll(v, 1, axis=0))
    step_out = np.sign(np.roll(v, -1, axis=0) - v)
    return v[np.any(step_in != step_out, axis=1)]


def plane_polygons(plane: np.ndarray) -> list[np.ndarray]:
    """Keyhole polygons of a 2D boolean plane (i = column, j = row): a list of float64 (n, 2)
    arrays of (i, j) pixel coordinates of voxel corners (values k + 0.5), each a closed polygon
    (the last vertex joins the first), n >= 4. Empty list for an empty plane."""
    plane = np.asarray(plane, bool)
    if plane.ndim != 2:
        raise ValueError(f"a plane is 2D, not of shape {plane.shape}")
    cols, rows = np.nonzero(plane.any(axis=1))[0], np.nonzero(plane.any(axis=0))[0]
    if len(cols) == 0:
        return []
    i0, j0 = int(cols[0]), int(rows[0])  # work on the bounding box: vertex arrays stay small
    crop = plane[i0:cols[-1] + 1, j0:rows[-1] + 1]
    n_cols, n_rows = crop.shape
    stride = n_rows + 1
    n_vertices = (n_cols + 1) * stride
    starts, dirs = _edges(crop)
    loops, loop_of = _loops(_next_edges(starts, dirs, stride, n_vertices))
    a, b = np.divmod(starts, stride)
    ends_a, ends_b = a + _DA[dirs], b + _DB[dirs]
    area2 = np.bincount(loop_of, weights=a * ends_b - ends_a * b, minlength=len(loops))  # shoelace, doubled

    # Every vertex's loop; a saddle corner lies on two loops (its second one in `other`).
    owner = np.full(n_vertices, -1, np.int64)
    other = np.full(n_vertices, -1, np.int64)
    order = np.argsort(starts, kind="stable")
    s_sorted, l_sorted = starts[order], loop_of[order]
    owner[s_sorted] = l_sorted  # the last edge out of a vertex wins
    first_of = np.r_[True, s_sorted[1:] != s_sorted[:-1]]
    other[s_sorted[first_of]] = l_sorted[first_of]
    other[other == owner] = -1
    owner_grid = owner.reshape(n_cols + 1, stride)

    # Each hole is joined to a loop above it: from its top (then leftmost) corner straight up to
    # the first corner on another loop. That stretch lies inside the foreground around the hole,
    # so the loop met bounds the same foreground and its own top is higher: the joins form trees
    # rooted at outer boundaries.
    joins: dict[tuple[int, int], tuple[int, int, int]] = {}  # (loop, corner) -> (hole, its top corner, corner met)
    holes = np.flatnonzero(area2 < 0)
    if len(holes):
        key = b * (n_cols + 1) + a
        top_key = np.full(len(loops), np.iinfo(np.int64).max)
        np.minimum.at(top_key, loop_of, key)
        for hole in holes.tolist():
            tb, ta = divmod(int(top_key[hole]), n_cols + 1)
            v = ta * stride + tb
            met = int(other[v]) if int(owner[v]) == hole else int(owner[v])
            if met >= 0 and met != hole:
                joins[(met, v)] = (hole, v, v)
                continue
            above = np.flatnonzero(owner_grid[ta, :tb] >= 0)
            if len(above) == 0:  # cannot happen: the foreground above a hole's top edge has an outline
                raise RuntimeError(f"contours: the hole at corner ({ta}, {tb}) has no boundary above it")
            w = ta * stride + int(above[-1])
            if (int(owner[w]), w) in joins:  # cannot happen: one cut reaches a corner, from below
                raise RuntimeError(f"contours: two holes join at corner {divmod(w, stride)}")
            joins[(int(owner[w]), w)] = (hole, v, w)

    loop_vertices = [starts[path].tolist() for path in loops]
    by_loop: dict[int, list[tuple[int, int, int, int]]] = {}  # loop -> [(position of the corner, hole, top, met)]
    for (loop, corner), (hole, top, met) in joins.items():
        by_loop.setdefault(loop, []).append((loop_vertices[loop].index(corner), hole, top, met))
    polygons = []
    for root in np.flatnonzero(area2 > 0).tolist():
        walked = _walk(root, loop_vertices, by_loop)
        va, vb = np.divmod(np.asarray(walked, np.int64), stride)
        corners = _simplify(np.stack([va, vb], axis=1))
        polygons.append(corners.astype(np.float64) + (i0 - 0.5, j0 - 0.5))
    return polygons


def _walk(root: int, loop_vertices: list[list[int]], by_loop: dict[int, list[tuple[int, int, int, int]]]) -> list[int]:
    """The corners of a root loop with its joined holes spliced in (each hole: down its cut,
    round the hole, back up the cut). Iterative: holes can chain deep in a noisy mask."""
    out: list[int] = []
    # (corners from where the walk enters the loop, its joins by position there, next join, next position, way back)
    stack: list[tuple[list[int], list, int, int, list[int] | None]] = [
        (loop_vertices[root], sorted(by_loop.get(root, ())), 0, 0, None)]
    while stack:
        verts, joins, n, pos, back = stack.pop()
        if n == len(joins):
            out.extend(verts[pos:])
            if back is not None:  # close the hole and walk back up its cut
                out.append(verts[0])
                out.extend(back)
            continue
        at, hole, top, met = joins[n]
        out.extend(verts[pos:at + 1])
        stack.append((verts, joins, n + 1, at + 1, back))
        cut = list(range(met, top + 1))  # corners from `met` down the grid line to `top`
        out.extend(cut[1:-1])
        hv = loop_vertices[hole]
        k = hv.index(top)
        rotated = hv[k:] + hv[:k]
        hole_joins = sorted(((p - k) % len(hv), *rest) for p, *rest in by_loop.get(hole, ()))
        stack.append((rotated, hole_joins, 0, 0, cut[::-1][1:]))
    return out
