"""Classical row: BM3D (Dabov et al., IEEE TIP 2007; the `bm3d` package of Mäkinen et al.,
IEEE TIP 2020, which takes the noise power spectrum of correlated noise) with the noise PSD
estimated from the training pairs and its scale chosen on validation.

CT noise is correlated (the reconstruction filter shapes it), so the model estimates the
noise's autocovariance from LDCT - NDCT inside the head over the training slices (lags up
to `psd_radius` pixels), turns it into the PSD of any slice size, and multiplies it by the
squared `noise_scale` that denoises the validation slices best (ldct.train calls
`calibrate`, then `set_scale`; nothing is trained by gradient descent). Runs on the CPU in
numpy, one slice at a time: Table 1 has no MAC count for it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from models import register


def _bm3d_package():
    import bm3d
    import numpy

    if not hasattr(numpy, "trapz"):  # bm4d 4.2.5 (bm3d's dependency) still calls np.trapz, gone in numpy 2.4
        numpy.trapz = numpy.trapezoid
    return bm3d


def noise_autocovariance(noise: np.ndarray, mask: np.ndarray, radius: int) -> np.ndarray:
    """Autocovariance of `noise` (S, H, W) over pixel pairs both inside `mask`, at lags
    -radius..radius in each direction: (2r+1, 2r+1), centre = the variance."""
    _, h, w = noise.shape
    shape = (h + radius, w + radius)  # zero padding: no wrap-around within the kept lags
    num = np.zeros(shape)
    den = np.zeros(shape)
    for n, m in zip(noise, mask):
        m = m.astype(float)  # one slice at a time: the whole mask as float64 would be GBs on real data
        x = (n - n[m > 0].mean()) * m if m.any() else n * 0
        fx, fm = np.fft.rfft2(x, shape), np.fft.rfft2(m, shape)
        num += np.fft.irfft2(np.abs(fx) ** 2, shape)
        den += np.fft.irfft2(np.abs(fm) ** 2, shape)
    cov = num / np.maximum(den, 1.0)
    lags = np.r_[np.arange(radius + 1), np.arange(-radius, 0)]
    return np.fft.fftshift(cov[np.ix_(lags % shape[0], lags % shape[1])])


def psd_for_shape(cov: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The noise PSD of an image of `shape` in bm3d's convention (E|fft2(noise)|^2, so white
    noise of variance v has v * H * W everywhere) from an autocovariance kernel; clipped to
    stay positive where the truncated kernel rings."""
    h, w = shape
    r = cov.shape[0] // 2
    kernel = np.zeros((max(h, cov.shape[0]), max(w, cov.shape[1])))
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            kernel[dy % kernel.shape[0], dx % kernel.shape[1]] += cov[dy + r, dx + r]
    psd = np.real(np.fft.fft2(kernel))[:h, :w] if kernel.shape == (h, w) else _resample(np.real(np.fft.fft2(kernel)), h, w)
    return np.maximum(psd, 1e-3 * psd.max()) * h * w


def _resample(psd: np.ndarray, h: int, w: int) -> np.ndarray:
    """A PSD on a larger grid sampled at the frequencies of an (h, w) grid (nearest)."""
    fy = np.round(np.fft.fftfreq(h) * psd.shape[0]).astype(int) % psd.shape[0]
    fx = np.round(np.fft.fftfreq(w) * psd.shape[1]).astype(int) % psd.shape[1]
    return psd[np.ix_(fy, fx)]


MIN_SIZE = 8  # the bm3d package's block size: smaller slices are padded (edge values) and cropped back


@register("bm3d")
class BM3D(nn.Module):
    """(N, 1, H, W) -> (N, 1, H, W), one slice at a time through `bm3d.bm3d`. Before
    calibration the noise is white with SD `sigma` (network units). `profile`: the package's
    ('np', 'refilter', 'vn', 'high'); `stages`: 'all' (hard thresholding + Wiener) or 'hard'."""

    calibrated = True  # ldct.train calibrates it instead of training it
    countable = False  # numpy: no MAC count (Table 1 n/a, training budget 0)
    reproducible_to = 1e-5  # the compiled bm3d library's results differ by ~2e-7 between calls (0.001 HU)

    def __init__(self, sigma: float = 0.01, psd_radius: int = 7, profile: str = "np", stages: str = "all",
                 noise_scales: tuple = (0.5, 0.7, 1.0, 1.4, 2.0)):
        super().__init__()
        if stages not in ("all", "hard"):
            raise ValueError(f"bm3d stages must be 'all' or 'hard', not {stages!r}")
        self.profile, self.stages, self.noise_scales = profile, stages, tuple(noise_scales)
        cov = np.zeros((2 * psd_radius + 1,) * 2)
        cov[psd_radius, psd_radius] = sigma**2
        self.register_buffer("autocovariance", torch.from_numpy(cov))
        self.register_buffer("noise_scale", torch.ones((), dtype=torch.float64))

    def calibrate(self, low: np.ndarray, full: np.ndarray, mask: np.ndarray) -> None:
        """Estimate the noise autocovariance from training pairs (S, H, W) in network units,
        inside `mask` (the head)."""
        r = self.autocovariance.shape[0] // 2
        self.autocovariance.copy_(torch.from_numpy(noise_autocovariance(low - full, mask, r)))

    def set_scale(self, scale: float) -> None:
        self.noise_scale.fill_(float(scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bm3d = _bm3d_package()
        stage = bm3d.BM3DStages.ALL_STAGES if self.stages == "all" else bm3d.BM3DStages.HARD_THRESHOLDING
        cov = self.autocovariance.cpu().numpy() * float(self.noise_scale) ** 2
        arr = x.detach().cpu().double().numpy()
        h, w = arr.shape[-2:]
        pad = ((0, max(0, MIN_SIZE - h)), (0, max(0, MIN_SIZE - w)))  # bm3d's blocks need 8 x 8 pixels
        psd = psd_for_shape(cov, (h + pad[0][1], w + pad[1][1]))
        out = np.stack([bm3d.bm3d(np.pad(s[0], pad, mode="edge"), psd, profile=self.profile, stage_arg=stage)[:h, :w]
                        for s in arr])
        return torch.from_numpy(out.reshape(arr.shape)).to(x.dtype).to(x.device)
