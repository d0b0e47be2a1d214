import CCoQuantKernels
import CoQuantModel
import CoQuantTensor
import Foundation

// The Runtime's linear kernels: packed weights read in place (PlaneLayout.swift) multiplied by the C kernels
// (coquant_kernels.h). Shapes: x [T, in] fp32 row-major → y [T, out].
//
//   activations quantized (W4A8, W4A4, W8A8, the ResQ/CoQuant mixed blocks): x → int8 codes per token and block,
//       integer GEMM (u4 planes × s8), scales and zero points in the epilogue. Same function as the simulator's
//       fake quantization; only the float summation order differs.
//   activations fp32 (W4A16, W3A16): T ≤ 4 → GEMV that dequantizes on the fly, fp32 accumulation; longer → rows
//       dequantized into fp32 tiles and multiplied by OpenBLAS sgemm.

public enum RuntimeError: Error, CustomStringConvertible {
    case unsupported(String)
    public var description: String { switch self { case .unsupported(let s): return s } }
}

/// Rows split over the workers in multiples of 4 (the GEMM's row tile), one worker when the work is small
/// (a dispatch costs microseconds; DESIGN.md §3).
func splitRows(_ rows: Int, work: Int, _ body: (Int, Int) -> Void) {
    let workers = work >= 1 << 16 ? forwardWorkers : 1
    if workers == 1 { body(0, rows); return }
    parallelFor(workers) { w in
        let r0 = (rows * w / workers) / 4 * 4, r1 = w == workers - 1 ? rows : (rows * (w + 1) / workers) / 4 * 4
        if r1 > r0 { body(r0, r1) }
    }
}

public final class PackedLinearKernel: LinearKernel, @unchecked Sendable {
    public let weights: PackedPlanes
    /// nil: fp32 activations (weight-only schemes).
    public let activation: [ActivationBlock]?
    let runs: [cq_run]
    let blocks: [cq_act_block]
    let zerosInt: [Int32]
    let sumU: [Int32]

    /// Fails when a run of weight columns straddles two activation blocks (the layout cannot compute that product).
    public init(_ weights: PackedPlanes, activation: [ActivationBlock]?) throws {
        self.weights = weights
        self.activation = activation
        let layout = weights.layout
        let blocks = activation ?? [ActivationBlock(col: 0, count: weights.cols, bits: 8)]
        runs = try layout.runs.map { r in
            guard let b = blocks.firstIndex(where: { $0.col <= r.col && r.col + r.count <= $0.col + $0.count }) else {
                throw RuntimeError.unsupported("weight columns \(r.col)..<\(r.col + r.count) (one group) span two activation blocks")
            }
            return cq_run(col: Int32(r.col), count: Int32(r.count), padded: Int32(r.padded), code_offset: Int32(r.paddedCol),
                          byte_offset: Int32(r.byteOffset), planes: Int32(r.planes), group: Int32(r.group), block: Int32(b))
        }
        self.blocks = blocks.map(\.kernelBlock)
        if activation != nil, let z = weights.zeros.first(where: { $0 != $0.rounded() }) {
            throw RuntimeError.unsupported("the integer kernels need integer weight zero points (found \(z)); grids with a min run with fp32 activations only")
        }
        zerosInt = weights.zeros.map { Int32($0) }
        var sums = [Int32](repeating: 0, count: weights.rows * layout.runs.count)
        runs.withUnsafeBufferPointer { r in
            cq_row_code_sums(weights.bytes.baseAddress!.assumingMemoryBound(to: UInt8.self), Int64(layout.rowBytes),
                             Int64(weights.rows), r.baseAddress!, Int32(r.count), &sums)
        }
        sumU = sums
    }

    public func apply(_ x: UnsafePointer<Float>, rows T: Int, into y: UnsafeMutablePointer<Float>) {
        let w = weights, R = w.rows, C = w.cols
        if activation == nil && T > 4 {
            productByTiles(x, rows: T, out: R, in: C, into: y, dequantize: dequantizeRows)
            return
        }
        let input = Input(self, x, rows: T)
        splitRows(R, work: T * R * C) { r0, r1 in product(input, rows: r0, r1, into: y) }
    }

    /// Decoding: the kernels over the same input with the same runs and activation blocks (q/k/v, gate/up) share one
    /// quantized (or gathered) input and one parallel loop over their rows laid end to end.
    public func apply(fusedWith others: [any LinearKernel], _ x: UnsafePointer<Float>, rows T: Int, into ys: [UnsafeMutablePointer<Float>]) -> Bool {
        let all = [self] + others.compactMap { $0 as? PackedLinearKernel }
        guard T <= 4, all.count == others.count + 1,
              all.allSatisfy({ $0.activation == activation && $0.weights.layout.runs == weights.layout.runs }) else { return false }
        let input = Input(self, x, rows: T)
        let rows = all.map(\.weights.rows), total = rows.reduce(0, +)
        splitRows(total, work: T * total * weights.cols) { r0, r1 in
            var base = 0
            for (k, kernel) in all.enumerated() {
                let a = max(r0, base), b = min(r1, base + rows[k])
                if a < b { kernel.product(input, rows: a - base, b - base, into: ys[k]) }
                base += rows[k]
            }
        }
        return true
    }

    /// The input of a product in the form the kernels read: int8 codes per token and run (quantized activations), or
    /// fp32 gathered into the run layout (weight-only decode).
    final class Input {
        let tokens: Int
        var codes: [Int8] = [], scales: [Float] = [], zeros: [Int32] = [], sums: [Int32] = []
        var gathered: [Float] = [], gatheredSums: [Float] = []

        init(_ k: PackedLinearKernel, _ x: UnsafePointer<Float>, rows T: Int) {
            tokens = T
            let C = k.weights.cols, P = k.weights.layout.paddedCols, nr = k.runs.count
            k.runs.withUnsafeBufferPointer { runs in
                if k.activation != nil {
                    codes = [Int8](repeating: 0, count: T * P)
                    scales = [Float](repeating: 0, count: T * nr); zeros = [Int32](repeating: 0, count: T * nr); sums = zeros
                    k.blocks.withUnsafeBufferPointer { b in
                        cq_quantize_activations(x, Int64(C), Int64(T), b.baseAddress!, Int32(b.count), runs.baseAddress!, Int32(nr), Int64(P),
                                                &codes, &scales, &zeros, &sums)
                    }
                } else {
                    gathered = [Float](repeating: 0, count: T * P); gatheredSums = [Float](repeating: 0, count: T * nr)
                    cq_gather_runs(x, Int64(C), Int64(T), runs.baseAddress!, Int32(nr), Int64(P), &gathered, &gatheredSums)
                }
            }
        }
    }

    /// Rows [r0, r1) of Ŵ in fp32, original column order: out [r1 − r0, cols] (prompt tiles; a 4-bit table's row).
    func dequantizeRows(_ r0: Int, _ r1: Int, into out: UnsafeMutablePointer<Float>) {
        let w = weights
        runs.withUnsafeBufferPointer { runs in w.scales.withUnsafeBufferPointer { s in w.zeros.withUnsafeBufferPointer { z in
            cq_dequantize_rows(w.bytes.baseAddress!.assumingMemoryBound(to: UInt8.self), Int64(w.layout.rowBytes), runs.baseAddress!,
                               Int32(runs.count), s.baseAddress!, z.baseAddress!, Int32(w.groups), Int64(w.cols), Int64(r0), Int64(r1), out)
        } } }
    }

    /// Rows [r0, r1) of y [T, rows] from a prepared input.
    func product(_ input: Input, rows r0: Int, _ r1: Int, into y: UnsafeMutablePointer<Float>) {
        let w = weights, R = w.rows, P = w.layout.paddedCols, nr = runs.count, T = input.tokens
        let wb = w.bytes.baseAddress!.assumingMemoryBound(to: UInt8.self), rb = Int64(w.layout.rowBytes)
        runs.withUnsafeBufferPointer { runs in
            let runs = runs.baseAddress!
            if activation != nil {
                w.scales.withUnsafeBufferPointer { sw in zerosInt.withUnsafeBufferPointer { zw in sumU.withUnsafeBufferPointer { su in
                    cq_gemm_w4a8(wb, rb, runs, Int32(nr), sw.baseAddress!, zw.baseAddress!, Int32(w.groups), su.baseAddress!,
                                 input.codes, Int64(P), Int64(T), input.scales, input.zeros, input.sums, y, Int64(R), Int64(r0), Int64(r1))
                } } }
            } else {
                w.scales.withUnsafeBufferPointer { sw in w.zeros.withUnsafeBufferPointer { zw in
                    cq_gemv_w4_f32(wb, rb, runs, Int32(nr), sw.baseAddress!, zw.baseAddress!, Int32(w.groups),
                                   input.gathered, Int64(P), Int64(T), input.gatheredSums, y, Int64(R), Int64(r0), Int64(r1))
                } }
            }
        }
    }
}

/// y[T, out] = x[T, in]·Ŵᵀ for any Ŵ that can be dequantized by row ranges: each worker takes its own rows, in tiles
/// of at most 1024 rows (4 MB of fp32 for d = 1024), so scratch stays small even for a 150k-token vocabulary.
func productByTiles(_ x: UnsafePointer<Float>, rows T: Int, out R: Int, in C: Int, into y: UnsafeMutablePointer<Float>,
                    dequantize: (Int, Int, UnsafeMutablePointer<Float>) -> Void) {
    withSingleThreadedBLAS {
        splitRows(R, work: T * R * C) { r0, r1 in
            let tile = 1024
            let scratch = UnsafeMutablePointer<Float>.allocate(capacity: min(tile, r1 - r0) * C)
            defer { scratch.deallocate() }
            var r = r0
            while r < r1 {
                let e = min(r + tile, r1)
                dequantize(r, e, scratch)
                Float.gemm(false, true, T, e - r, C, 1, x, C, scratch, C, 0, y + r, R)
                r = e
            }
        }
    }
}

/// Int8 rows with a scale each: the embedding table (and the tied LM head), or an untied LM head.
public final class Int8RowsKernel: RowTableKernel, @unchecked Sendable {
    public let table: Int8Rows

    public init(_ table: Int8Rows) { self.table = table }

    public func row(_ r: Int, into out: UnsafeMutablePointer<Float>) { table.row(r, into: out) }

    public func apply(_ x: UnsafePointer<Float>, rows T: Int, into y: UnsafeMutablePointer<Float>) {
        let R = table.rows, C = table.cols, codes = table.codes.baseAddress!
        table.scales.withUnsafeBufferPointer { s in
            rowTableProduct(self, x, rows: T, out: R, in: C, into: y) { r0, r1 in
                cq_gemv_q8_f32(codes, Int64(C), s.baseAddress!, x, Int64(C), Int64(T), y, Int64(R), Int64(r0), Int64(r1))
            }
        }
    }
}

/// y[T, R] = x·Ŵᵀ for a row table: its GEMV `gemv(r0, r1)` while decoding, rows converted into sgemm tiles for prompts.
func rowTableProduct(_ table: any RowTableKernel, _ x: UnsafePointer<Float>, rows T: Int, out R: Int, in C: Int,
                     into y: UnsafeMutablePointer<Float>, gemv: (Int, Int) -> Void) {
    if T <= 4 {
        splitRows(R, work: T * R * C, gemv)
    } else {
        productByTiles(x, rows: T, out: R, in: C, into: y) { r0, r1, out in
            for r in r0..<r1 { table.row(r, into: out + (r - r0) * C) }
        }
    }
}

/// fp16 rows (`--embeddings f16`): the GEMV converts with F16C on the fly; prompts convert tiles for sgemm.
public final class F16RowsKernel: RowTableKernel, @unchecked Sendable {
    public let table: F16Rows

    public init(_ table: F16Rows) { self.table = table }

    public func row(_ r: Int, into out: UnsafeMutablePointer<Float>) { table.row(r, into: out) }

    public func apply(_ x: UnsafePointer<Float>, rows T: Int, into y: UnsafeMutablePointer<Float>) {
        let R = table.rows, C = table.cols, bits = table.bits.baseAddress!
        rowTableProduct(self, x, rows: T, out: R, in: C, into: y) { r0, r1 in
            cq_gemv_f16_f32(bits, Int64(C), x, Int64(C), Int64(T), y, Int64(R), Int64(r0), Int64(r1))
        }
    }
}

/// A 4-bit table (`--embeddings int4`, plane runs of 32 columns): the LM head is a weight-only packed linear, and a
/// token's embedding is one dequantized row.
public final class PackedRowsKernel: RowTableKernel, @unchecked Sendable {
    let linear: PackedLinearKernel

    public init(_ planes: PackedPlanes) throws { linear = try PackedLinearKernel(planes, activation: nil) }

    public func row(_ r: Int, into out: UnsafeMutablePointer<Float>) { linear.dequantizeRows(r, r + 1, into: out) }

    public func apply(_ x: UnsafePointer<Float>, rows T: Int, into y: UnsafeMutablePointer<Float>) { linear.apply(x, rows: T, into: y) }
}

