"""The shapes detector's geometry: connected components from horizontal runs, convex hulls,
minimum-area rectangles, sub-pixel iso-contours, and the ideal shape of a class fitted to a soft
coverage map. Plain numpy, no knowledge of colours or of GenEval."""

from __future__ import annotations

import math

import numpy as np

MAX_EDGE_WIDTH = 4.0  # px: the widest blurred edge the fit allows for


# -- connected components from horizontal runs ------------------------------------------------------
def label_components(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components of equal, non-negative values of `labels` ([H, W] int; < 0 is
    background). Returns (component id per pixel, -1 outside; number of components)."""
    H, W = labels.shape
    padded = np.full((H, W + 1), -2, dtype=np.int64)
    padded[:, :W] = labels
    flat = padded.ravel()
    starts = np.flatnonzero(np.concatenate(([True], flat[1:] != flat[:-1])))
    ends = np.concatenate((starts[1:], [flat.size]))
    values = flat[starts]
    keep = values >= 0
    starts, ends, values = starts[keep], ends[keep], values[keep]
    rows = starts // (W + 1)
    c0 = starts % (W + 1)
    c1 = c0 + (ends - starts)
    n = len(starts)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    # runs of each row are contiguous and sorted by column in `starts`
    row_bounds = np.searchsorted(rows, np.arange(H + 1))
    for r in range(H - 1):
        a_lo, a_hi = row_bounds[r], row_bounds[r + 1]
        b_lo, b_hi = row_bounds[r + 1], row_bounds[r + 2]
        if a_lo == a_hi or b_lo == b_hi:
            continue
        j = b_lo
        for i in range(a_lo, a_hi):
            while j < b_hi and c1[j] < c0[i]:  # run j ends left of run i (no diagonal contact)
                j += 1
            k = j
            while k < b_hi and c0[k] <= c1[i]:  # 8-connectivity: touching diagonally counts
                if values[k] == values[i]:
                    ri, rk = find(i), find(k)
                    if ri != rk:
                        parent[rk] = ri
                k += 1
    roots = np.asarray([find(i) for i in range(n)], dtype=np.int64)
    uniq, comp_of_run = np.unique(roots, return_inverse=True)
    comp = np.full((H, W), -1, dtype=np.int64)
    for i in range(n):
        comp[rows[i], c0[i] : c1[i]] = comp_of_run[i]
    return comp, len(uniq)


# -- geometry ---------------------------------------------------------------------------------------
def convex_hull(points: np.ndarray) -> np.ndarray:
    """Andrew's monotone chain; points [N, 2] -> hull vertices [M, 2] (counter-clockwise)."""
    pts = np.unique(np.round(points, 6), axis=0)  # sorted by x, then y
    if len(pts) < 3:
        return pts

    def half(seq: list[list[float]]) -> list[tuple[float, float]]:
        chain: list[tuple[float, float]] = []
        for x, y in seq:  # plain floats: this loop is the detector's hot spot
            while len(chain) >= 2:
                (ox, oy), (ax, ay) = chain[-2], chain[-1]
                if (ax - ox) * (y - oy) - (ay - oy) * (x - ox) > 0:
                    break
                chain.pop()
            chain.append((x, y))
        return chain

    listed = pts.tolist()
    lower = half(listed)
    upper = half(listed[::-1])
    return np.asarray(lower[:-1] + upper[:-1])


def polygon_area_perimeter(poly: np.ndarray) -> tuple[float, float]:
    if len(poly) < 3:
        return 0.0, 0.0
    x, y = poly[:, 0], poly[:, 1]
    area = 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))
    perimeter = float(np.linalg.norm(np.roll(poly, -1, axis=0) - poly, axis=1).sum())
    return area, perimeter


def min_area_rect(hull: np.ndarray) -> tuple[float, float, float]:
    """(area, long side, short side) of the minimum-area rectangle around a convex polygon (one
    of its sides is collinear with a hull edge)."""
    if len(hull) < 3:
        return 0.0, 0.0, 0.0
    edges = np.roll(hull, -1, axis=0) - hull
    lengths = np.linalg.norm(edges, axis=1)
    edges = edges[lengths > 1e-9] / lengths[lengths > 1e-9, None]
    normals = np.stack([-edges[:, 1], edges[:, 0]], axis=1)
    u = hull @ edges.T  # [M, E]
    v = hull @ normals.T
    w = u.max(0) - u.min(0)
    h = v.max(0) - v.min(0)
    areas = w * h
    i = int(np.argmin(areas))
    return float(areas[i]), float(max(w[i], h[i])), float(min(w[i], h[i]))


def iso_contour_points(cov: np.ndarray, level: float = 0.5) -> np.ndarray:
    """Sub-pixel points where the coverage map crosses `level` between 4-neighbour pixel centres
    (pixel (i, j) has its centre at x = j + 0.5, y = i + 0.5). `cov` must be zero-padded. A pixel
    at exactly `level` counts as inside (an edge pixel half covered is common in exact renders of
    axis-aligned shapes; a strict test would drop those crossings and shrink the contour)."""
    pts = []
    a, b = cov[:, :-1], cov[:, 1:]
    ii, jj = np.nonzero((a >= level) != (b >= level))
    if len(ii):
        t = (level - a[ii, jj]) / (b[ii, jj] - a[ii, jj])
        pts.append(np.stack([jj + 0.5 + t, ii + 0.5], axis=1))
    a, b = cov[:-1, :], cov[1:, :]
    ii, jj = np.nonzero((a >= level) != (b >= level))
    if len(ii):
        t = (level - a[ii, jj]) / (b[ii, jj] - a[ii, jj])
        pts.append(np.stack([jj + 0.5, ii + 0.5 + t], axis=1))
    return np.concatenate(pts) if pts else np.zeros((0, 2))


def ideal_coverage(
    shape: str, area: float, cx: float, cy: float, angle: float, xs: np.ndarray, ys: np.ndarray, width: float = 1.0
) -> np.ndarray:
    """Approximate pixel coverage of the ideal `shape` of the given area, centred at (cx, cy) and
    rotated by `angle` (radians; a square's side direction, a triangle's vertex direction), at
    pixel centres `xs` [W] and `ys` [H]: clip(0.5 - signed distance to the outline / width, 0, 1)
    (width 1: a sharp render's area anti-aliasing; wider: a blurred edge)."""
    X = xs[None, :] - cx
    Y = ys[:, None] - cy
    if shape == "circle":
        sd = np.sqrt(X * X + Y * Y) - math.sqrt(area / math.pi)
    elif shape == "square":
        c, s = math.cos(angle), math.sin(angle)
        h = 0.5 * math.sqrt(area)
        qx = np.abs(c * X + s * Y) - h
        qy = np.abs(-s * X + c * Y) - h
        sd = np.sqrt(np.maximum(qx, 0.0) ** 2 + np.maximum(qy, 0.0) ** 2) + np.minimum(np.maximum(qx, qy), 0.0)
    elif shape == "triangle":
        inradius = math.sqrt(area / (3.0 * math.sqrt(3.0)))  # area = 3 * sqrt(3) * inradius^2
        sd = None
        for k in range(3):  # outward normals point away from the vertices
            t = angle + math.pi + k * 2.0 * math.pi / 3.0
            dk = math.cos(t) * X + math.sin(t) * Y - inradius
            sd = dk if sd is None else np.maximum(sd, dk)
    else:
        raise ValueError(f"no ideal shape for '{shape}'")
    return np.clip(0.5 - sd / width, 0.0, 1.0)


def fit_ideal(shape: str, win: np.ndarray) -> tuple[float, tuple[float, float, float, float, float]]:
    """Fit the ideal `shape` to a soft coverage window (zero border) by moments: the same area,
    the same centroid, orientation from the 4th (square) or 3rd (triangle) complex moment, and an
    edge ramp as wide as the window's edges (blur, from the mass of partial pixels). Returns
    (soft IoU sum(min) / sum(max) between the window and the fitted shape,
    (area, cx, cy, angle, edge width)) in window pixels."""
    area = float(win.sum())
    if area <= 0:
        return 0.0, (0.0, 0.0, 0.0, 0.0, 1.0)
    H, W = win.shape
    xs = np.arange(W) + 0.5
    ys = np.arange(H) + 0.5
    wx, wy = win.sum(0), win.sum(1)
    cx, cy = float(wx @ xs) / area, float(wy @ ys) / area
    angle = 0.0
    if shape != "circle":
        rr, cc = np.nonzero(win)
        w = win[rr, cc]
        z = (cc + 0.5 - cx) + 1j * (rr + 0.5 - cy)
        if shape == "square":  # an axis-aligned square has arg(m4) = pi
            angle = (float(np.angle(np.sum(w * z**4))) - math.pi) / 4.0
        else:  # a triangle's 3rd moment points along its vertices
            angle = float(np.angle(np.sum(w * z**3))) / 3.0
    # the fitted shape may stick out of the window: pad it with zeros
    reach = math.sqrt(area) + 2.0  # > circumradius of any of the three shapes of this area
    x0, y0 = min(0, math.floor(cx - reach)), min(0, math.floor(cy - reach))
    x1, y1 = max(W, math.ceil(cx + reach)), max(H, math.ceil(cy + reach))
    if (x0, y0, x1, y1) != (0, 0, W, H):
        padded = np.zeros((y1 - y0, x1 - x0))
        padded[-y0 : H - y0, -x0 : W - x0] = win
        win = padded
        xs = np.arange(x0, x1) + 0.5
        ys = np.arange(y0, y1) + 0.5
    # edge width: a linear ramp of width w across an outline of length P has sum cov(1-cov) = P w / 6
    if shape == "circle":
        perimeter = 2.0 * math.sqrt(math.pi * area)
    elif shape == "square":
        perimeter = 4.0 * math.sqrt(area)
    else:
        perimeter = 3.0 * math.sqrt(4.0 * area / math.sqrt(3.0))
    width = min(max(6.0 * float((win * (1.0 - win)).sum()) / perimeter, 1.0), MAX_EDGE_WIDTH)
    ideal = ideal_coverage(shape, area, cx, cy, angle, xs, ys, width)
    union = float(np.maximum(win, ideal).sum())
    iou = float(np.minimum(win, ideal).sum()) / union if union > 0 else 0.0
    return iou, (area, cx, cy, angle, width)


def dilate(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    out[1:, :] |= mask[:-1, :]
    out[:-1, :] |= mask[1:, :]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    out[1:, 1:] |= mask[:-1, :-1]
    out[1:, :-1] |= mask[:-1, 1:]
    out[:-1, 1:] |= mask[1:, :-1]
    out[:-1, :-1] |= mask[1:, 1:]
    return out
