"""The paper's Table 1 and beyond: metrics (L1, PSNR, SSIM, LPIPS, FID, IS), the protocol,
classical baselines."""
