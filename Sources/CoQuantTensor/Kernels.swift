import CCoQuantKernels
import COpenBLAS
import Foundation

// Element-wise kernels of the forward pass. BLAS has none of these, and a scalar `expf` per attention score costs
// more than the attention GEMMs themselves at 2048 tokens, hence the SIMD8 versions (built with -target-cpu haswell).

/// e^x for 8 lanes: Cody–Waite range reduction to r ∈ [−ln2/2, ln2/2] and a degree-6 polynomial (Cephes expf
/// coefficients); relative error ≈ 2 ulp over the float range, exact 0 below −87.3.
@inlinable @inline(__always)
public func exp8(_ x: SIMD8<Float>) -> SIMD8<Float> {
    // Clamp with compare + blend: the generic pointwiseMin/Max are not inlined and cost as much as the polynomial.
    var x = x
    x.replace(with: SIMD8(repeating: -87.33654), where: x .< -87.33654)
    x.replace(with: SIMD8(repeating: 88.72283), where: x .> 88.72283)
    // Round x·log2(e) to an integer with the 1.5·2²³ trick: the sum's low mantissa bits are n itself. (Generic
    // SIMD float→int conversions do not vectorise.)
    let shifted = x * 1.44269504088896341 + 12582912
    let n = shifted - 12582912
    var r = x - n * 0.693359375
    r = r - n * -2.12194440e-4
    var p = SIMD8<Float>(repeating: 1.9875691500e-4)
    p = p * r + 1.3981999507e-3
    p = p * r + 8.3334519073e-3
    p = p * r + 4.1665795894e-2
    p = p * r + 1.6666665459e-1
    p = p * r + 5.0000001201e-1
    p = p * (r * r) + r + 1
    let bits = (unsafeBitCast(shifted, to: SIMD8<Int32>.self) &- 0x4B40_0000 &+ 127) &<< 23
    return p * unsafeBitCast(bits, to: SIMD8<Float>.self)
}

/// ln x for 8 lanes of positive x: x = m·2^e with m ∈ [√½, √2), then a degree-9 polynomial in m − 1 (Cephes logf
/// coefficients); relative error ≈ 1 ulp. 0 gives ≈ −87.3 (the float minimum's log), not −∞, which is what the
/// callers want: pow8 of 0 is then 0 to within 1e-38.
@inlinable @inline(__always)
public func log8(_ x: SIMD8<Float>) -> SIMD8<Float> {
    let bits = unsafeBitCast(x, to: SIMD8<Int32>.self)
    var e = SIMD8<Float>((bits &>> 23) & 0xff &- 126)
    var m = unsafeBitCast((bits & 0x007f_ffff) | 0x3f00_0000, to: SIMD8<Float>.self)     // [0.5, 1), x > 0
    let small = m .< 0.707106781186547524
    e.replace(with: e - 1, where: small)
    m.replace(with: m + m, where: small)
    m = m - 1
    let z = m * m
    var p = SIMD8<Float>(repeating: 7.0376836292e-2)
    p = p * m - 1.1514610310e-1
    p = p * m + 1.1676998740e-1
    p = p * m - 1.2420140846e-1
    p = p * m + 1.4249322787e-1
    p = p * m - 1.6668057665e-1
    p = p * m + 2.0000714765e-1
    p = p * m - 2.4999993993e-1
    p = p * m + 3.3333331174e-1
    var y = p * m * z
    y = y + e * -2.12194440e-4
    y = y - z * 0.5
    return m + y + e * 0.693359375
}

/// |x|^a for 8 lanes as e^(a·ln|x|): relative error ≈ a few ulp of float, which is the precision the reference's
/// float32 torch computes the same powers in (GPTQ's MSE clip search, |q − w|^2.4).
@inlinable @inline(__always)
public func powAbs8(_ x: SIMD8<Float>, _ a: Float) -> SIMD8<Float> {
    let magnitude = unsafeBitCast(unsafeBitCast(x, to: SIMD8<UInt32>.self) & 0x7fff_ffff, to: SIMD8<Float>.self)
    return exp8(log8(magnitude) * a)
}

/// Largest of x[0..<n].
@inline(__always)
public func maxElement(_ x: UnsafePointer<Float>, _ n: Int) -> Float {
    var m8 = SIMD8<Float>(repeating: -.infinity)
    var i = 0
    while i + 8 <= n {
        let v = UnsafeRawPointer(x + i).loadUnaligned(as: SIMD8<Float>.self)
        m8.replace(with: v, where: v .> m8)
        i += 8
    }
    var mx = -Float.infinity
    for j in 0..<8 { mx = max(mx, m8[j]) }
    while i < n { mx = max(mx, x[i]); i += 1 }
    return mx
}

/// In-place softmax of `x[0..<n]`; returns nothing, the row sums to 1.
public func softmaxInPlace(_ x: UnsafeMutablePointer<Float>, _ n: Int) {
    let mx = maxElement(x, n)
    var i = 0
    var sum8 = SIMD8<Float>()
    var sum: Float = 0
    i = 0
    while i + 8 <= n {
        let e = exp8(UnsafeRawPointer(x + i).loadUnaligned(as: SIMD8<Float>.self) - mx)
        UnsafeMutableRawPointer(x + i).storeBytes(of: e, as: SIMD8<Float>.self)
        sum8 += e
        i += 8
    }
    while i < n { x[i] = expf(x[i] - mx); sum += x[i]; i += 1 }
    let inv = 1 / (sum + sum8.sum())
    i = 0
    while i + 8 <= n {
        let v = UnsafeRawPointer(x + i).loadUnaligned(as: SIMD8<Float>.self) * inv
        UnsafeMutableRawPointer(x + i).storeBytes(of: v, as: SIMD8<Float>.self)
        i += 8
    }
    while i < n { x[i] *= inv; i += 1 }
}

/// y = w ⊙ x / sqrt(mean(x²) + eps) for one row of length n (HF's RMSNorm, float32 math).
public func rmsNorm(_ x: UnsafePointer<Float>, _ w: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>,
                    _ n: Int, eps: Float) {
    var ss8 = SIMD8<Float>()
    var ss: Float = 0
    var i = 0
    while i + 8 <= n {
        let v = UnsafeRawPointer(x + i).loadUnaligned(as: SIMD8<Float>.self)
        ss8 += v * v
        i += 8
    }
    while i < n { ss += x[i] * x[i]; i += 1 }
    let inv = 1 / (((ss + ss8.sum()) / Float(n)) + eps).squareRoot()
    for j in 0..<n { y[j] = w[j] * (x[j] * inv) }
}

/// gate ← silu(gate) ⊙ up, element-wise over n values (the SwiGLU product).
public func siluMultiply(_ gate: UnsafeMutablePointer<Float>, _ up: UnsafePointer<Float>, _ n: Int) {
    var i = 0
    while i + 8 <= n {
        let g = UnsafeRawPointer(gate + i).loadUnaligned(as: SIMD8<Float>.self)
        let u = UnsafeRawPointer(up + i).loadUnaligned(as: SIMD8<Float>.self)
        let s = g / (1 + exp8(-g))
        UnsafeMutableRawPointer(gate + i).storeBytes(of: s * u, as: SIMD8<Float>.self)
        i += 8
    }
    while i < n { let g = gate[i]; gate[i] = g / (1 + expf(-g)) * up[i]; i += 1 }
}

/// Runs `body(chunk)` for chunks 0..<count on both cores, on the persistent workers (WorkerPool.swift). Callers
/// size chunks so each is well over the ≈ 1 µs hand-off.
@inline(__always)
public func parallelFor(_ count: Int, _ body: (Int) -> Void) {
    if count == 1 { body(0); return }
    WorkerPool.shared.run(count, body)
}

/// Worker count of the forward pass's own parallel loops (both cores).
public let forwardWorkers = max(1, min(ProcessInfo.processInfo.activeProcessorCount, 8))

/// Runs `body` with OpenBLAS single-threaded and restores its thread count after. The forward pass splits work
/// across cores itself (each worker calls single-threaded BLAS and then its own softmax on the same rows): with
/// OpenBLAS's own pool, its idle workers spin in sched_yield while our element-wise loops run, and the two fight
/// over the two cores (measured: 15 % of prefill time in the scheduler).
public func withSingleThreadedBLAS<R>(_ body: () throws -> R) rethrows -> R {
    let before = openblas_get_num_threads()
    if before != 1 { openblas_set_num_threads(1) }
    defer { if before != 1 { openblas_set_num_threads(before) } }
    return try body()
}

/// C[m, n] = alpha · A[m, k] · op(B) split across `forwardWorkers` threads (single-threaded BLAS each): by rows of
/// A for prefill, by columns of C when there are too few rows (decoding one token); small problems stay on the
/// calling thread.
public func parallelSgemm(transB: Bool, _ m: Int, _ n: Int, _ k: Int, _ alpha: Float, _ a: UnsafePointer<Float>, _ lda: Int,
                          _ b: UnsafePointer<Float>, _ ldb: Int, _ c: UnsafeMutablePointer<Float>, _ ldc: Int) {
    withSingleThreadedBLAS { parallelSgemmBody(transB: transB, m, n, k, alpha, a, lda, b, ldb, c, ldc) }
}

func parallelSgemmBody(transB: Bool, _ m: Int, _ n: Int, _ k: Int, _ alpha: Float, _ a: UnsafePointer<Float>, _ lda: Int,
                       _ b: UnsafePointer<Float>, _ ldb: Int, _ c: UnsafeMutablePointer<Float>, _ ldc: Int) {
    let workers = m * n * k >= 1 << 18 ? forwardWorkers : 1
    if m >= 4 * workers {
        parallelFor(workers) { w in
            let r0 = m * w / workers, r1 = m * (w + 1) / workers
            Float.gemm(false, transB, r1 - r0, n, k, alpha, a + r0 * lda, lda, b, ldb, 0, c + r0 * ldc, ldc)
        }
    } else {
        parallelFor(workers) { w in
            let c0 = n * w / workers, c1 = n * (w + 1) / workers
            Float.gemm(false, transB, m, c1 - c0, k, alpha, a, lda, transB ? b + c0 * ldb : b + c0, ldb, 0, c + c0, ldc)
        }
    }
}

/// Causal attention of a few new query rows (decoding) over a position-major fp32 KV cache: q, ctx [rows, H·hd];
/// k, v [start + rows, KV·hd]. Same function as the GEMM path of the prefill, without packing the whole cache into a
/// GEMM panel per token (coquant_kernels.h).
public func attentionDecode(_ q: UnsafePointer<Float>, _ k: UnsafePointer<Float>, _ v: UnsafePointer<Float>,
                            _ ctx: UnsafeMutablePointer<Float>, rows: Int, start: Int, heads H: Int, kvHeads KV: Int, headDim hd: Int) {
    let view = cq_kv_view(k: k, v: v, kc: nil, vc: nil, ksz: nil, vsz: nil, kb: nil, vb: nil, nkb: 0, nvb: 0,
                          kv_heads: Int32(KV), head_dim: Int32(hd))
    attentionDecode(q, view, ctx, rows: rows, start: start, heads: H)
}

/// The positions split over the workers, each computing its share for every head (a group's cached rows are read
/// once for its H/KV query heads), then merged by their softmax maxima and sums: flash-decoding. Splitting heads
/// instead would leave a core idle for a fifth of the time with SmolLM2's 9 heads.
func attentionDecode(_ q: UnsafePointer<Float>, _ view: cq_kv_view, _ ctx: UnsafeMutablePointer<Float>, rows: Int, start: Int, heads H: Int) {
    let hd = Int(view.head_dim), G = H / Int(view.kv_heads), n = start + rows, scale = 1 / Float(hd).squareRoot()
    // A short context is microseconds of work, less than waking the other core.
    let parts = n >= 256 ? forwardWorkers : 1
    let m = UnsafeMutablePointer<Float>.allocate(capacity: parts * rows * H), l = UnsafeMutablePointer<Float>.allocate(capacity: parts * rows * H)
    let acc = UnsafeMutablePointer<Float>.allocate(capacity: parts * rows * H * hd)
    defer { m.deallocate(); l.deallocate(); acc.deallocate() }
    withUnsafePointer(to: view) { view in
        parallelFor(parts) { w in
            let p0 = n * w / parts, p1 = n * (w + 1) / parts
            let scratch = UnsafeMutablePointer<Float>.allocate(capacity: G * (p1 - p0) + hd)
            defer { scratch.deallocate() }
            cq_attention_part(q, view, Int64(rows), Int64(start), Int32(H), scale, Int64(p0), Int64(p1), scratch,
                              m + w * rows * H, l + w * rows * H, acc + w * rows * H * hd)
        }
    }
    cq_attention_merge(Int32(parts), Int64(rows), Int32(H), Int32(hd), m, l, acc, ctx)
}

/// How one column range of a row is quantized with its own scale and zero point: a linear's input per token, or a
/// KV-cache row per (token, head) (the simulator's ActivationQuantizer).
public struct ActivationBlock: Sendable, Equatable {
    public var col: Int
    public var count: Int
    public var bits: Int
    /// Plain min/max range (the per-head o_proj input of ResQ/CoQuant); false: 0 forced into the range.
    public var minMax: Bool
    public var clip: Float

    public init(col: Int, count: Int, bits: Int, minMax: Bool = false, clip: Float = 1) {
        self.col = col; self.count = count; self.bits = bits; self.minMax = minMax; self.clip = clip
    }

    public var kernelBlock: cq_act_block {
        cq_act_block(col: Int32(col), count: Int32(count), bits: Int32(bits), min_max: minMax ? 1 : 0, clip: clip)
    }
}

/// Codes of one (token, KV head) row of a packed KV cache: `blocks` over its hd columns, each with its own scale and
/// zero point (layout: coquant_kernels.h "Packed KV cache"). Quantizing and dequantizing give the simulator's fake
/// quantized values bit for bit.
public struct KVRowCodec: Sendable, Equatable {
    public let blocks: [ActivationBlock]
    public let headDim: Int
    public let rowBytes: Int
    let kernelBlocks: [cq_act_block]

    public init(blocks: [ActivationBlock], headDim: Int) {
        self.blocks = blocks
        self.headDim = headDim
        kernelBlocks = blocks.map(\.kernelBlock)
        rowBytes = Int(cq_kv_row_bytes(kernelBlocks, Int32(blocks.count)))
    }

    public static func == (a: Self, b: Self) -> Bool { a.blocks == b.blocks && a.headDim == b.headDim }

    /// Floats of (scale, zero point) per row.
    public var gridCount: Int { 2 * blocks.count }

    /// x [rows, hd] → codes [rows, rowBytes], grids [rows, gridCount].
    public func quantize(_ x: UnsafePointer<Float>, rows: Int, codes: UnsafeMutablePointer<UInt8>, grids: UnsafeMutablePointer<Float>) {
        cq_kv_quantize(x, Int64(rows), Int32(headDim), kernelBlocks, Int32(blocks.count), codes, grids)
    }

    /// codes, grids → x̂ [rows, hd].
    public func dequantize(_ codes: UnsafePointer<UInt8>, grids: UnsafePointer<Float>, rows: Int, into out: UnsafeMutablePointer<Float>) {
        cq_kv_dequantize(codes, grids, Int64(rows), Int32(headDim), kernelBlocks, Int32(blocks.count), out)
    }

    /// x ← x̂ in place: the cache's rounding for a forward pass that keeps keys and values in fp32.
    public func roundTrip(_ x: UnsafeMutablePointer<Float>, rows: Int) {
        let codes = UnsafeMutablePointer<UInt8>.allocate(capacity: rows * rowBytes)
        let grids = UnsafeMutablePointer<Float>.allocate(capacity: rows * gridCount)
        defer { codes.deallocate(); grids.deallocate() }
        quantize(x, rows: rows, codes: codes, grids: grids)
        dequantize(codes, grids: grids, rows: rows, into: x)
    }
}

/// `attentionDecode` over a packed cache: keys/values as codes [start + rows, KV, rowBytes] and grids
/// [start + rows, KV, gridCount].
public func attentionDecode(_ q: UnsafePointer<Float>,
                            keys kc: UnsafePointer<UInt8>, _ kg: UnsafePointer<Float>, _ keyCodec: KVRowCodec,
                            values vc: UnsafePointer<UInt8>, _ vg: UnsafePointer<Float>, _ valueCodec: KVRowCodec,
                            _ ctx: UnsafeMutablePointer<Float>, rows: Int, start: Int, heads H: Int, kvHeads KV: Int) {
    keyCodec.kernelBlocks.withUnsafeBufferPointer { kb in
        valueCodec.kernelBlocks.withUnsafeBufferPointer { vb in
            let view = cq_kv_view(k: nil, v: nil, kc: kc, vc: vc, ksz: kg, vsz: vg, kb: kb.baseAddress, vb: vb.baseAddress,
                                  nkb: Int32(kb.count), nvb: Int32(vb.count), kv_heads: Int32(KV), head_dim: Int32(keyCodec.headDim))
            attentionDecode(q, view, ctx, rows: rows, start: start, heads: H)
        }
    }
}
