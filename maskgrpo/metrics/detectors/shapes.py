"""Exact detector for the shapes world: flat-colour shapes on a uniform grey background.

1. Every pixel is compared with the mixing line from the background to each named colour (an
   anti-aliased edge pixel is `alpha * colour + (1 - alpha) * background`), so edge pixels get
   their object's colour rather than whatever named colour their blend happens to be near.
2. Pixels covered at least half by some colour form connected components (8-connected, per
   colour, found from horizontal runs with a union-find); fragments of a few pixels are merged
   into the object they touch or dropped.
3. Per component: colour = nearest named colour of the median of its core pixels; a soft coverage
   map against that colour gives a sub-pixel iso-0.5 contour, its convex hull and the hull's
   minimum-area rotated rectangle. The hull fills ~1.0 of that rectangle for a square (any
   rotation), pi/4 for a circle and 1/2 for a triangle; the ratio and the roundness 4*pi*A/P^2
   decide the class.
4. Components that are not convex (merged objects, blobs) or elongated get a low score (below
   GenEval's 0.3 threshold), so the rules ignore them; clean shapes score 1.0.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from ...registry import detectors
from ...tasks.shapes import BACKGROUND, COLORS
from .base import Detection

_NAMES = list(COLORS)
_PALETTE = np.asarray([COLORS[n] for n in _NAMES], dtype=np.float64)  # [K, 3]

# Class boundaries on (fill of the min-area rectangle, roundness 4*pi*A/P^2), measured on 1,500
# renders (32..256 px images, objects 8 px to half the image, any rotation, jitter and noise):
# circles fill 0.78-0.82 with roundness >= 0.98; squares fill >= 0.92; triangles fill <= 0.67.
SQUARE_MIN_FILL = 0.88
TRIANGLE_MAX_FILL = 0.72
CIRCLE_MIN_ROUNDNESS = 0.94


def classify_shape(fill: float, roundness: float) -> str:
    if fill >= SQUARE_MIN_FILL:
        return "square"
    if fill <= TRIANGLE_MAX_FILL:
        return "triangle"
    if roundness >= CIRCLE_MIN_ROUNDNESS:
        return "circle"
    return "square" if fill >= 0.8 else "triangle"


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
    pts = np.unique(np.round(points, 6), axis=0)
    if len(pts) < 3:
        return pts

    def cross(o: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower: list[np.ndarray] = []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    upper: list[np.ndarray] = []
    for p in pts[::-1]:
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
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
    (pixel (i, j) has its centre at x = j + 0.5, y = i + 0.5). `cov` must be zero-padded."""
    pts = []
    a, b = cov[:, :-1], cov[:, 1:]
    ii, jj = np.nonzero((a - level) * (b - level) < 0)
    if len(ii):
        t = (level - a[ii, jj]) / (b[ii, jj] - a[ii, jj])
        pts.append(np.stack([jj + 0.5 + t, ii + 0.5], axis=1))
    a, b = cov[:-1, :], cov[1:, :]
    ii, jj = np.nonzero((a - level) * (b - level) < 0)
    if len(ii):
        t = (level - a[ii, jj]) / (b[ii, jj] - a[ii, jj])
        pts.append(np.stack([jj + 0.5, ii + 0.5 + t], axis=1))
    return np.concatenate(pts) if pts else np.zeros((0, 2))


def _dilate(mask: np.ndarray) -> np.ndarray:
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


def nearest_color(rgb: np.ndarray) -> str:
    """Nearest named colour (Euclidean in sRGB) of one RGB triple."""
    return _NAMES[int(np.argmin(np.linalg.norm(_PALETTE - np.asarray(rgb, dtype=np.float64), axis=1)))]


@detectors.register("shapes")
class ShapesDetector:
    """Exact detector for flat-colour shapes on a grey background (no weights): components by colour, class by geometry."""

    def __init__(
        self,
        background: tuple[int, int, int] = BACKGROUND,
        estimate_background: bool = True,
        fg_threshold: float = 24.0,
        min_pixels: int = 4,
        min_area: float = 6.0,
        min_solidity: float = 0.85,
        max_aspect: float = 1.5,
        low_score: float = 0.2,
        min_regular_area: float = 16.0,
    ):
        self.background = np.asarray(background, dtype=np.float64)
        self.estimate_background = estimate_background
        self.fg_threshold = fg_threshold
        self.min_pixels = min_pixels
        self.min_area = min_area
        self.min_solidity = min_solidity
        self.max_aspect = max_aspect
        self.low_score = low_score
        # generated images have small blobs that pass for shapes; the smallest legitimate object
        # (8 px across: a triangle of circumradius 4) covers about 20 px
        self.min_regular_area = min_regular_area

    def _background(self, img: np.ndarray) -> np.ndarray:
        if not self.estimate_background:
            return self.background
        border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
        close = border[np.linalg.norm(border - self.background, axis=1) < 30]
        if len(close) < 0.25 * len(border):
            return self.background
        return np.median(close, axis=0)

    def detect(self, image: Image.Image) -> list[Detection]:
        return self.analyse(image)[0]

    def analyse(self, image: Image.Image) -> tuple[list[Detection], list[dict[str, float]]]:
        """Detections plus the geometric features behind each (for debugging and tests)."""
        img = np.asarray(image.convert("RGB"), dtype=np.float64)
        H, W, _ = img.shape
        bg = self._background(img)
        d = img - bg  # [H, W, 3]
        D = _PALETTE - bg  # [K, 3]
        alpha = np.clip(np.einsum("hwc,kc->hwk", d, D) / (D * D).sum(1), 0.0, 1.0)  # [H, W, K]
        resid = np.linalg.norm(d[:, :, None, :] - alpha[..., None] * D, axis=-1)  # [H, W, K]
        best = resid.argmin(-1)
        best_alpha = np.take_along_axis(alpha, best[..., None], -1)[..., 0]
        dist = np.linalg.norm(d, axis=-1)
        strong = (dist > self.fg_threshold) & (best_alpha >= 0.5)
        labels = np.where(strong, best, -1)
        comp, n = label_components(labels)
        if n == 0:
            return [], []
        counts = np.bincount(comp[comp >= 0], minlength=n)

        # fragments: merge into the large component they touch most, else drop
        for c in np.flatnonzero(counts < self.min_pixels):
            m = comp == c
            ring = _dilate(m) & ~m
            neigh = comp[ring]
            neigh = neigh[(neigh >= 0) & (counts[np.maximum(neigh, 0)] >= self.min_pixels)]
            comp[m] = np.bincount(neigh).argmax() if len(neigh) else -1
        ids = [c for c in range(n) if counts[c] >= self.min_pixels]
        strong_any = comp >= 0

        dets: list[Detection] = []
        feats: list[dict[str, float]] = []
        for c in ids:
            m = comp == c
            if not m.any():
                continue
            pix = img[m]
            core_alpha = best_alpha[m]
            core = pix[core_alpha >= 0.9] if (core_alpha >= 0.9).sum() >= 3 else pix
            median = np.median(core, axis=0)
            color = nearest_color(median)
            Dc = median - bg
            if float(Dc @ Dc) < 1e-6:
                continue
            own = np.clip((d @ Dc) / float(Dc @ Dc), 0.0, 1.0)
            # coverage of this object: its strong pixels, plus weak (edge) pixels next to them whose
            # colour lies on this object's mixing line
            weak = _dilate(m) & ~strong_any
            on_line = np.linalg.norm(d - own[..., None] * Dc, axis=-1) <= 0.35 * dist + 10.0
            cov = np.where(m | (weak & on_line), own, 0.0)
            rr, cc = np.nonzero(cov > 0)
            r0, r1, c0, c1 = rr.min(), rr.max() + 1, cc.min(), cc.max() + 1
            win = np.zeros((r1 - r0 + 2, c1 - c0 + 2))
            win[1:-1, 1:-1] = cov[r0:r1, c0:c1]
            soft_area = float(win.sum())
            pts = iso_contour_points(win)
            if soft_area < self.min_area or len(pts) < 3:
                continue
            pts = pts + np.array([c0 - 1, r0 - 1])
            hull = convex_hull(pts)
            hull_area, perimeter = polygon_area_perimeter(hull)
            if hull_area <= 0:
                continue
            rect_area, long_side, short_side = min_area_rect(hull)
            fill = hull_area / rect_area
            roundness = 4 * math.pi * hull_area / perimeter**2
            solidity = soft_area / hull_area
            aspect = long_side / max(short_side, 1e-9)
            label = classify_shape(fill, roundness)
            regular = solidity >= self.min_solidity and aspect <= self.max_aspect and soft_area >= self.min_regular_area
            box = (float(hull[:, 0].min()), float(hull[:, 1].min()), float(hull[:, 0].max()), float(hull[:, 1].max()))
            mask = np.zeros((H, W), dtype=bool)
            mask[cov >= 0.5] = True
            dets.append(Detection(label, 1.0 if regular else self.low_score, box, mask, color))
            feats.append(
                {"fill": fill, "roundness": roundness, "solidity": solidity, "aspect": aspect, "area": soft_area}
            )
        return dets, feats
