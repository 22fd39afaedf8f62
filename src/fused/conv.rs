//! 2-D convolution as three fused products (unfold, a matrix product, a transposition inside one op),
//! differentiable to any order.
//!
//! `unfold` (im2col) copies each output position's receptive field into a row, `(b, c, h, w)` to
//! `(b oh ow, c kh kw)` (zeros where the window hangs over the padding), and the kernel reshaped to
//! `(out, c kh kw)` acts on the rows as a linear layer; `fold`, which adds each row back onto its
//! window, is unfold's adjoint. The convolution, its input gradient and its kernel gradient are
//! three ops ([`Part`]) closed under differentiation, like the linear layer's (`super::linear`):
//! the unfolded rows and the transpositions live inside the ops, not in the graph, so candle's
//! backward does not zero-fill and add a gradient for each of them (in the MNIST CNN's FGM step those
//! took a third of the time, the rows of the second layer being 5 MB per pass), and each gradient is
//! computed only where it is wanted. candle's own `conv2d` backward always computes the input's
//! gradient, by a direct `conv_transpose2d`, even for an image batch that needs none. Book: "Fused
//! operations and speed", section "Taylor mode and the fused convolution".

use super::kernel::{Data, Real, check_input, data};
use super::linear::{sum_columns, sum_rows};
use super::product::product_of;
use super::wanted::{needs_gradient, returned};
use crate::Error;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};
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
    if pairs > 1 && super::kernel::parallel(out.len()) {
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
    // Whole images only: the zip below pairs each image's rows with one image of `x`.
    debug_assert_eq!(x.len() % g.image().max(1), 0);
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

/// `(b, p, o)` to `(b, o, p)`, plus `bias[o]` on every entry of channel `o` where given.
fn channels_before_positions<T: Real>(y: &[T], p: usize, o: usize, bias: Option<&[T]>) -> Vec<T> {
    let mut out = vec![T::zero(); y.len()];
    per_image(&mut out, p * o, y, p * o, |out, y| {
        for (channel, out) in out.chunks_exact_mut(p).enumerate() {
            let shift = bias.map_or(T::zero(), |b| b[channel]);
            for (position, v) in out.iter_mut().enumerate() {
                *v = y[position * o + channel] + shift;
            }
        }
    });
    out
}

/// `(b, o, p)` to `(b, p, o)`.
fn positions_before_channels<T: Real>(u: &[T], p: usize, o: usize) -> Vec<T> {
    let mut out = vec![T::zero(); u.len()];
    per_image(&mut out, p * o, u, p * o, |out, u| {
        for (position, out) in out.chunks_exact_mut(o).enumerate() {
            for (channel, v) in out.iter_mut().enumerate() {
                *v = u[channel * p + position];
            }
        }
    });
    out
}

/// `(b, o, p)` to `(o, b, p)`.
fn channels_first<T: Real>(u: &[T], p: usize, o: usize) -> Vec<T> {
    let images = u.len() / (p * o);
    let mut out = Vec::with_capacity(u.len());
    for channel in 0..o {
        for image in 0..images {
            let start = (image * o + channel) * p;
            out.extend_from_slice(&u[start..start + p]);
        }
    }
    out
}

/// The three products a convolution and its derivatives are made of, for kernel `K` `(o, r)`
/// (`r = c kh kw`) and `U(x)` the unfolded rows of `x`, `(b p, r)` with `p = oh ow`:
///
/// | part | arguments | value | gradient of the first | of the second |
/// |---|---|---|---|---|
/// | `Forward` | `x, K (, bias)` | `U(x) K^T` as `(b, o, oh, ow)` | `InputGrad(u, K)` | `KernelGrad(u, x)` |
/// | `InputGrad` | `g, K` | `fold(g K)` as `(b, c, h, w)` | `Forward(u, K)` | `KernelGrad(g, u)` |
/// | `KernelGrad` | `g, x` | `g^T U(x)` as `(o, r)` | `Forward(x, u)` | `InputGrad(g, u)` |
///
/// (`g` an incoming gradient of the output's shape, `u` the gradient arriving at the part.) Each is
/// one matrix product ([`super::product`]) between an unfold or fold and a transposition, none of
/// them graph nodes; the bias's gradient is `u` summed over images and positions, by products.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Part {
    Forward,
    InputGrad,
    KernelGrad,
}

#[derive(Clone, Copy, Debug)]
struct Conv {
    part: Part,
    g: Geometry,
}

/// The dims of a tensor, or an error naming the part and what it expected.
fn expect_dims(part: Part, what: &str, l: &Layout, expected: &[usize]) -> candle_core::Result<()> {
    if l.dims() != expected {
        return Err(candle_core::Error::Msg(format!(
            "advtrain-conv2d ({part:?}): the {what} has shape {:?}, expected {expected:?}",
            l.dims()
        )));
    }
    Ok(())
}

impl Conv {
    fn name(&self) -> &'static str {
        match self.part {
            Part::Forward => "advtrain-conv2d",
            Part::InputGrad => "advtrain-conv2d-input-grad",
            Part::KernelGrad => "advtrain-conv2d-kernel-grad",
        }
    }

    /// `(b, c, h, w)` of the input side, `(b, o, oh, ow)` of the output side.
    fn image_dims(&self, b: usize) -> [usize; 4] {
        [b, self.g.channels, self.g.height, self.g.width]
    }

    fn output_dims(&self, b: usize, o: usize) -> [usize; 4] {
        [b, o, self.g.out_h, self.g.out_w]
    }

    fn run<T: Real>(
        &self,
        (first, l1): (&[T], &Layout),
        (second, l2): (&CpuStorage, &Layout),
        bias: Option<&[T]>,
    ) -> candle_core::Result<(Vec<T>, Shape)> {
        let g = &self.g;
        let (p, r) = (g.out_h * g.out_w, g.row());
        let b = l1.dims().first().copied().unwrap_or(0);
        match self.part {
            Part::Forward => {
                expect_dims(self.part, "input", l1, &self.image_dims(b))?;
                let o = l2.dims().first().copied().unwrap_or(0);
                expect_dims(self.part, "kernel", l2, &[o, r])?;
                let rows = unfold(first, g);
                let lr = Layout::contiguous((b * p, r));
                let kernel = T::slice(second)?;
                let y = product_of(&rows, &lr, kernel, &l2.transpose(0, 1)?, (b * p, o, r))?;
                let y = channels_before_positions(&y, p, o, bias);
                Ok((y, Shape::from(self.output_dims(b, o).to_vec())))
            }
            Part::InputGrad => {
                let o = l1.dims().get(1).copied().unwrap_or(0);
                expect_dims(self.part, "gradient", l1, &self.output_dims(b, o))?;
                expect_dims(self.part, "kernel", l2, &[o, r])?;
                let rows = positions_before_channels(first, p, o);
                let lr = Layout::contiguous((b * p, o));
                let rows = product_of(&rows, &lr, T::slice(second)?, l2, (b * p, r, o))?;
                let image = fold(&rows, g);
                Ok((image, Shape::from(self.image_dims(b).to_vec())))
            }
            Part::KernelGrad => {
                let o = l1.dims().get(1).copied().unwrap_or(0);
                expect_dims(self.part, "gradient", l1, &self.output_dims(b, o))?;
                expect_dims(self.part, "input", l2, &self.image_dims(b))?;
                let x = T::slice(second)?;
                let (start, end) = l2.contiguous_offsets().unwrap_or((0, 0));
                let x = x.get(start..end).ok_or_else(|| {
                    candle_core::Error::Msg(format!(
                        "{}: the input's layout is out of its storage",
                        self.name()
                    ))
                })?;
                let rows = unfold(x, g);
                let u = channels_first(first, p, o);
                let lu = Layout::contiguous((o, b * p));
                let lr = Layout::contiguous((b * p, r));
                let k = product_of(&u, &lu, &rows, &lr, (o, r, b * p))?;
                Ok((k, Shape::from((o, r))))
            }
        }
    }

    fn cpu_fwd(
        &self,
        (s1, l1): (&CpuStorage, &Layout),
        (s2, l2): (&CpuStorage, &Layout),
        bias: Option<(&CpuStorage, &Layout)>,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let name = self.name();
        // The second argument goes to the product as storage with its layout (the product reads
        // from the layout's offset), or is read through `data`: it must be contiguous.
        if !l2.is_contiguous() {
            return Err(candle_core::Error::Msg(format!(
                "{name}: the second argument must be contiguous (the public function makes it so)"
            )));
        }
        let bias = bias.map(|(s, l)| data(name, s, l)).transpose()?;
        match (data(name, s1, l1)?, bias) {
            (Data::F32(a), None) => self
                .run((a, l1), (s2, l2), None)
                .map(|(v, s)| (CpuStorage::F32(v), s)),
            (Data::F32(a), Some(Data::F32(b))) => self
                .run((a, l1), (s2, l2), Some(b))
                .map(|(v, s)| (CpuStorage::F32(v), s)),
            (Data::F64(a), None) => self
                .run((a, l1), (s2, l2), None)
                .map(|(v, s)| (CpuStorage::F64(v), s)),
            (Data::F64(a), Some(Data::F64(b))) => self
                .run((a, l1), (s2, l2), Some(b))
                .map(|(v, s)| (CpuStorage::F64(v), s)),
            _ => Err(candle_core::Error::Msg(format!(
                "{name}: the input and the bias have different dtypes"
            ))),
        }
    }

    /// The gradients of the two arguments for an incoming `u`, each only where needed.
    fn gradients(
        &self,
        a: &Tensor,
        b: &Tensor,
        u: &Tensor,
    ) -> candle_core::Result<[Option<Tensor>; 2]> {
        let u = u.contiguous()?;
        let with = |part| Conv { part, g: self.g };
        let grad_a = match (needs_gradient(a), self.part) {
            (false, _) => None,
            (true, Part::Forward) => Some(u.apply_op2(b, with(Part::InputGrad))?),
            (true, Part::InputGrad) => Some(u.apply_op2(b, with(Part::Forward))?),
            (true, Part::KernelGrad) => Some(b.apply_op2(&u, with(Part::Forward))?),
        };
        let grad_b = match (needs_gradient(b), self.part) {
            (false, _) => None,
            (true, Part::Forward) => Some(u.apply_op2(a, with(Part::KernelGrad))?),
            (true, Part::InputGrad) => Some(a.apply_op2(&u, with(Part::KernelGrad))?),
            (true, Part::KernelGrad) => Some(a.apply_op2(&u, with(Part::InputGrad))?),
        };
        Ok([grad_a, grad_b])
    }
}

impl CustomOp2 for Conv {
    fn name(&self) -> &'static str {
        Conv::name(self)
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        Conv::cpu_fwd(self, (s1, l1), (s2, l2), None)
    }
    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _: &Tensor,
        u: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let [ga, gb] = self.gradients(a, b, u)?;
        Ok((returned(ga), returned(gb)))
    }
}

impl CustomOp3 for Conv {
    fn name(&self) -> &'static str {
        Conv::name(self)
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let o = l2.dims().first().copied().unwrap_or(0);
        expect_dims(self.part, "bias", l3, &[o])?;
        Conv::cpu_fwd(self, (s1, l1), (s2, l2), Some((s3, l3)))
    }
    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        bias: &Tensor,
        _: &Tensor,
        u: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let [ga, gb] = self.gradients(a, b, u)?;
        let grad_bias = match needs_gradient(bias) {
            true => Some(bias_gradient(u)?),
            false => None,
        };
        Ok((returned(ga), returned(gb), returned(grad_bias)))
    }
}

/// `u` `(b, o, oh, ow)` summed over images and positions, `(o,)`, by products (differentiable).
fn bias_gradient(u: &Tensor) -> candle_core::Result<Tensor> {
    let (b, o, oh, ow) = u.dims4()?;
    let per_position = sum_rows(&u.contiguous()?.reshape((b, o * oh * ow))?)?;
    sum_columns(&per_position.reshape((o, oh * ow))?)
}

/// The geometry of `x` `(b, c, h, w)` under `kernel` `(out, c, kh, kw)`, or an error naming the
/// argument.
fn geometry(x: &Tensor, kernel: &Tensor, stride: usize, padding: usize) -> crate::Result<Geometry> {
    let (_, channels, height, width) = x.dims4().map_err(|_| Error::ShapeMismatch {
        name: "x",
        expected: "(batch, channels, height, width)".into(),
        got: x.dims().to_vec(),
    })?;
    let (out_channels, kernel_channels, kernel_h, kernel_w) =
        kernel.dims4().map_err(|_| Error::ShapeMismatch {
            name: "kernel",
            expected: "(out_channels, in_channels, kernel_h, kernel_w)".into(),
            got: kernel.dims().to_vec(),
        })?;
    if x.elem_count() == 0 || kernel.elem_count() == 0 || out_channels == 0 {
        return Err(Error::InvalidArgument {
            name: if x.elem_count() == 0 { "x" } else { "kernel" },
            reason: format!(
                "an empty dimension: x {:?}, kernel {:?}",
                x.dims(),
                kernel.dims()
            ),
            fix: "pass images and a kernel with every dimension at least 1".into(),
        });
    }
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
        padding
            .checked_mul(2)
            .and_then(|both| size.checked_add(both))
            .and_then(|padded| padded.checked_sub(k))
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
/// `conv2d` (dilation 1, one group). Three fused ops on the CPU (the module doc), differentiable to any
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
    let out = kernel.dim(0)?;
    if !x.device().is_cpu() {
        let y = x.conv2d(kernel, padding, stride, 1, 1)?;
        return match bias {
            Some(bias) => y.broadcast_add(&bias.reshape((1, out, 1, 1))?),
            None => Ok(y),
        };
    }
    let op = Conv {
        part: Part::Forward,
        g,
    };
    let (x, weight) = (
        x.contiguous()?,
        kernel.contiguous()?.reshape((out, g.row()))?,
    );
    match bias {
        Some(bias) => x.apply_op3(&weight, &bias.contiguous()?, op),
        None => x.apply_op2(&weight, op),
    }
}
