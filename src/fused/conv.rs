//! 2-D convolution as unfold (im2col) then the fused linear op, differentiable to any order.
//!
//! `unfold` copies each output position's receptive field into a row, `(b, c, h, w)` to
//! `(b, oh * ow, c * kh * kw)` (zeros where the window hangs over the padding); the kernel reshaped to
//! `(out, c * kh * kw)` then acts as a linear layer on the rows ([`super::linear`]). `unfold` is linear
//! and its adjoint is `fold`, which adds each row back onto the window it came from, so the backward
//! of one is the other and every order differentiates. candle's own `conv2d` backward always computes
//! the input's gradient, by a direct `conv_transpose2d`, even for an image batch that needs none, and
//! the kernel's as a convolution with the gradient as kernel; here the linear op leaves out the input's
//! gradient where nothing asks for it (data) and the kernel's is one matrix product. Book: "Fused
//! operations and speed", section "Taylor mode and the fused convolution".

use super::kernel::{Real, check_input, dispatch1};
use crate::Error;
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

/// The sizes of one convolution.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    channels: usize,
    height: usize,
    width: usize,
    kernel_h: usize,
    kernel_w: usize,
    stride: usize,
    padding: usize,
    out_h: usize,
    out_w: usize,
}

impl Geometry {
    fn image(&self) -> usize {
        self.channels * self.height * self.width
    }

    fn row(&self) -> usize {
        self.channels * self.kernel_h * self.kernel_w
    }

    fn columns(&self) -> usize {
        self.out_h * self.out_w * self.row()
    }

    /// Calls `f(segment_in_row, input_start, lo, hi)` for every output position and every
    /// `(channel, ky)` of its window, one image: the row's entries `kx` in `lo..hi` (where the window
    /// row lies inside the image) come from the input's `input_start..input_start + hi - lo`; the
    /// rest of the segment, and every segment whose row `iy` is padding (`None`), is zero.
    #[inline(always)]
    fn for_each_segment(
        &self,
        mut f: impl FnMut(std::ops::Range<usize>, Option<usize>, usize, usize),
    ) {
        let (kh, kw, s, p) = (self.kernel_h, self.kernel_w, self.stride, self.padding);
        let plane = self.height * self.width;
        for oy in 0..self.out_h {
            for ox in 0..self.out_w {
                let row = (oy * self.out_w + ox) * self.row();
                // The input column of entry kx is ox * s + kx - p: inside for kx in lo..hi.
                let x0 = ox * s;
                let lo = p.saturating_sub(x0).min(kw);
                let hi = (self.width + p).saturating_sub(x0).clamp(lo, kw);
                for c in 0..self.channels {
                    for ky in 0..kh {
                        let segment = row + (c * kh + ky) * kw;
                        let iy = (oy * s + ky)
                            .checked_sub(p)
                            .filter(|&iy| iy < self.height && lo < hi);
                        let start = iy.map(|iy| c * plane + iy * self.width + x0 + lo - p);
                        f(segment..segment + kw, start, lo, hi);
                    }
                }
            }
        }
    }
}

/// Runs `body(out_image, in_image)` over the images, in parallel when there is enough work.
fn per_image<U: Send, T: Sync>(
    out: &mut [U],
    out_len: usize,
    input: &[T],
    in_len: usize,
    body: impl Fn(&mut [U], &[T]) + Sync,
) {
    let pairs = out.len() / out_len.max(1);
    if pairs > 1 && out.len() >= 2 * super::kernel::GRAIN && rayon::current_num_threads() > 1 {
        out.par_chunks_mut(out_len)
            .zip(input.par_chunks(in_len))
            .for_each(|(o, i)| body(o, i));
    } else {
        out.chunks_mut(out_len)
            .zip(input.chunks(in_len))
            .for_each(|(o, i)| body(o, i));
    }
}

/// Every row entry is written (the window's values, zeros over the padding), so the output needs no
/// zero-filling first.
fn unfold<T: Real>(x: &[T], g: &Geometry) -> Vec<T> {
    let len = x.len() / g.image() * g.columns();
    let mut out = Vec::with_capacity(len);
    let spare = &mut out.spare_capacity_mut()[..len];
    per_image(spare, g.columns(), x, g.image(), |rows, image| {
        g.for_each_segment(|segment, start, lo, hi| {
            let segment = &mut rows[segment];
            match start {
                Some(start) => {
                    let (head, rest) = segment.split_at_mut(lo);
                    let (middle, tail) = rest.split_at_mut(hi - lo);
                    for v in head.iter_mut().chain(tail) {
                        v.write(T::zero());
                    }
                    for (v, &x) in middle.iter_mut().zip(&image[start..start + hi - lo]) {
                        v.write(x);
                    }
                }
                None => {
                    for v in segment {
                        v.write(T::zero());
                    }
                }
            }
        });
    });
    // SAFETY: the segments tile every row of every image, and each is written in full above.
    unsafe { out.set_len(len) };
    out
}

fn fold<T: Real>(rows: &[T], g: &Geometry) -> Vec<T> {
    let images = rows.len() / g.columns();
    let mut out = vec![T::zero(); images * g.image()];
    per_image(&mut out, g.image(), rows, g.columns(), |image, rows| {
        g.for_each_segment(|segment, start, lo, hi| {
            if let Some(start) = start {
                let source = &rows[segment][lo..hi];
                for (v, &r) in image[start..start + hi - lo].iter_mut().zip(source) {
                    *v = *v + r;
                }
            }
        });
    });
    out
}

/// `(b, c, h, w)` to `(b, oh * ow, c * kh * kw)`.
struct Unfold(Geometry);
/// `(b, oh * ow, c * kh * kw)` to `(b, c, h, w)`, overlapping windows summed: `Unfold`'s adjoint.
struct Fold(Geometry);

impl CustomOp1 for Unfold {
    fn name(&self) -> &'static str {
        "advtrain-unfold"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let b = l.dims()[0];
        let g = &self.0;
        let out = dispatch1!("advtrain-unfold", s, l, unfold, g);
        Ok((out, Shape::from((b, g.out_h * g.out_w, g.row()))))
    }
    fn bwd(&self, _: &Tensor, _: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1(Fold(self.0))?))
    }
}

impl CustomOp1 for Fold {
    fn name(&self) -> &'static str {
        "advtrain-fold"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let b = l.dims()[0];
        let g = &self.0;
        let out = dispatch1!("advtrain-fold", s, l, fold, g);
        Ok((out, Shape::from((b, g.channels, g.height, g.width))))
    }
    fn bwd(&self, _: &Tensor, _: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1(Unfold(self.0))?))
    }
}

/// The geometry of `x` `(b, c, h, w)` under `kernel` `(out, c, kh, kw)`, or an error naming the
/// argument.
fn geometry(x: &Tensor, kernel: &Tensor, stride: usize, padding: usize) -> crate::Result<Geometry> {
    let (_, channels, height, width) = x.dims4().map_err(|_| Error::ShapeMismatch {
        name: "x",
        expected: "(batch, channels, height, width)".into(),
        got: x.dims().to_vec(),
    })?;
    let (_, kernel_channels, kernel_h, kernel_w) =
        kernel.dims4().map_err(|_| Error::ShapeMismatch {
            name: "kernel",
            expected: "(out_channels, in_channels, kernel_h, kernel_w)".into(),
            got: kernel.dims().to_vec(),
        })?;
    if kernel_channels != channels {
        return Err(Error::ShapeMismatch {
            name: "kernel",
            expected: format!("{channels} input channels, as x has"),
            got: kernel.dims().to_vec(),
        });
    }
    if stride == 0 {
        return Err(Error::InvalidArgument {
            name: "stride",
            reason: "must be at least 1".into(),
            fix: "pass stride >= 1".into(),
        });
    }
    let out = |size: usize, k: usize| {
        (size + 2 * padding)
            .checked_sub(k)
            .map(|span| span / stride + 1)
    };
    match (out(height, kernel_h), out(width, kernel_w)) {
        (Some(out_h), Some(out_w)) => Ok(Geometry {
            channels,
            height,
            width,
            kernel_h,
            kernel_w,
            stride,
            padding,
            out_h,
            out_w,
        }),
        _ => Err(Error::ShapeMismatch {
            name: "kernel",
            expected: format!("a window that fits {height} x {width} with padding {padding}"),
            got: kernel.dims().to_vec(),
        }),
    }
}

/// The convolution of `x` `(b, c, h, w)` with `kernel` `(out, c, kh, kw)` plus an optional `bias`
/// `(out,)`, at `stride` with zero `padding` on every side: `(b, out, oh, ow)`, equal to candle's
/// `conv2d` (dilation 1, one group). Unfold and the fused linear op on the CPU, differentiable to any
/// order; candle's `conv2d` elsewhere.
pub fn conv2d(
    x: &Tensor,
    kernel: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> candle_core::Result<Tensor> {
    check_input("x", x)?;
    let g = geometry(x, kernel, stride, padding)?;
    let (b, out) = (x.dim(0)?, kernel.dim(0)?);
    if !x.device().is_cpu() {
        let y = x.conv2d(kernel, padding, stride, 1, 1)?;
        return match bias {
            Some(bias) => y.broadcast_add(&bias.reshape((1, out, 1, 1))?),
            None => Ok(y),
        };
    }
    let rows = x.contiguous()?.apply_op1(Unfold(g))?;
    let weight = kernel.reshape((out, g.row()))?;
    super::linear(&rows, &weight, bias)?
        .transpose(1, 2)?
        .reshape((b, out, g.out_h, g.out_w))
}
