import CCoQuantKernels
import CoQuantModel
@testable import CoQuantQuant
@testable import CoQuantRuntime
import CoQuantTensor
import XCTest

// Every kernel against its scalar reference (exact for the integer GEMM: the integer parts are exact and the
// float epilogue runs in the same order) and against plain float math on the dequantized values.
final class RuntimeKernelTests: XCTestCase {
    var rng = SeededGenerator(seed: 7)

    /// A random linear whose columns fall into `groups` runs of mixed widths (4-bit and, where `mixed`, 8-bit).
    func randomLinear(rows: Int, cols: Int, runs: [Int], mixed: Bool, extreme: Bool = false) -> PackedLinear {
        var groupIndex: [Int32] = []
        for (g, n) in runs.enumerated() { groupIndex += Array(repeating: Int32(g), count: n) }
        precondition(groupIndex.count == cols)
        let widths = runs.indices.map { mixed && $0 % 2 == 1 ? 8 : 4 }
        var codes = [Int32](repeating: 0, count: rows * cols)
        for r in 0..<rows {
            for c in 0..<cols {
                let maxq = (1 << widths[Int(groupIndex[c])]) - 1
                codes[r * cols + c] = extreme ? Int32(maxq) : Int32.random(in: 0...Int32(maxq), using: &rng)
            }
        }
        let scales = (0..<(rows * runs.count)).map { _ in Float.random(in: 0.001...0.1, using: &rng) }
        let zeros = (0..<(rows * runs.count)).map { i in Float(Int.random(in: 0...((1 << widths[i % runs.count]) - 1), using: &rng)) }
        return PackedLinear(bits: mixed ? 8 : 4, rows: rows, cols: cols, codes: codes, scales: scales, zeros: zeros,
                            groupIndex: groupIndex, groupBits: mixed ? widths : nil)
    }

    func testPlaneLayoutRoundTrips() {
        let p = randomLinear(rows: 5, cols: 100, runs: [37, 50, 13], mixed: true)
        let planes = PackedPlanes(p)
        XCTAssertEqual(planes.layout.runs.map(\.padded), [64, 64, 32])
        XCTAssertEqual(planes.layout.rowBytes, 32 + 64 + 16)
        for r in 0..<5 { for c in 0..<100 { XCTAssertEqual(planes.code(r, c), Int(p.code(r, c))) } }
        XCTAssertEqual(planes.dequantized(), p.dequantized())
        // The prefill's tile dequantization gives exactly the simulator's weights, in both code paths.
        let kernel = try! PackedLinearKernel(planes, activation: nil)
        for simd in [1, 0] {
            cq_set_simd(Int32(simd))
            var out = [Float](repeating: .nan, count: 5 * 100)
            kernel.runs.withUnsafeBufferPointer { runs in
                cq_dequantize_rows(planes.bytes.baseAddress!.assumingMemoryBound(to: UInt8.self), Int64(planes.layout.rowBytes),
                                   runs.baseAddress!, Int32(runs.count), planes.scales, planes.zeros, Int32(planes.groups), 100, 0, 5, &out)
            }
            cq_set_simd(1)
            XCTAssertEqual(out, p.dequantized(), "simd \(simd)")
        }
        // Σu per (row, run), AVX2 and scalar: the codes' plain sum (8-bit runs as 16·hi + lo).
        let expected = (0..<5).flatMap { r in planes.layout.runs.map { run in (0..<run.count).reduce(Int32(0)) { $0 + Int32(p.code(r, run.col + $1)) } } }
        for simd in [1, 0] {
            cq_set_simd(Int32(simd))
            var sums = [Int32](repeating: -1, count: expected.count)
            kernel.runs.withUnsafeBufferPointer { runs in
                cq_row_code_sums(planes.bytes.baseAddress!.assumingMemoryBound(to: UInt8.self), Int64(planes.layout.rowBytes), 5,
                                 runs.baseAddress!, Int32(runs.count), &sums)
            }
            cq_set_simd(1)
            XCTAssertEqual(sums, expected, "simd \(simd)")
        }
    }

    /// Activation codes give back exactly the simulator's fake-quantized values, s·(a − z').
    func testActivationCodesEqualTheSimulator() throws {
        for (bits, minMax, clip) in [(4, false, Float(1)), (8, false, 1), (4, true, 0.9), (8, true, 1), (3, false, 0.95)] {
            let T = 5, C = 77
            var x = (0..<(T * C)).map { _ in Float.random(in: -3...2, using: &rng) }
            for c in 0..<C { x[2 * C + c] = abs(x[2 * C + c]) + 0.5 }     // a token with no negative value
            for c in 0..<C { x[3 * C + c] = 0 }                          // and an all-zero one
            let q = try ActivationQuantizer(bits: bits, clipRatio: clip, rangeRule: minMax ? .minMax : .includeZero)
            var simulated = x
            try simulated.withUnsafeMutableBufferPointer { try q.apply($0.baseAddress!, rows: T, cols: C) }
            let planes = PackedPlanes(randomLinear(rows: 1, cols: C, runs: [C], mixed: false))
            let kernel = try PackedLinearKernel(planes, activation: [ActivationBlock(col: 0, count: C, bits: bits, minMax: minMax, clip: clip)])
            for simd in [1, 0] {
                cq_set_simd(Int32(simd))
                defer { cq_set_simd(1) }
                let P = planes.layout.paddedCols
                var a = [Int8](repeating: 1, count: T * P), sa = [Float](repeating: 0, count: T), za = [Int32](repeating: 0, count: T), suma = za
                kernel.runs.withUnsafeBufferPointer { runs in kernel.blocks.withUnsafeBufferPointer { blocks in
                    cq_quantize_activations(x, Int64(C), Int64(T), blocks.baseAddress!, 1, runs.baseAddress!, 1, Int64(P), &a, &sa, &za, &suma)
                } }
                for t in 0..<T {
                    var sum: Int32 = 0
                    for c in 0..<C {
                        XCTAssertEqual(sa[t] * Float(Int32(a[t * P + c]) - za[t]), simulated[t * C + c], "bits \(bits) token \(t) col \(c) simd \(simd)")
                        sum += Int32(a[t * P + c])
                    }
                    XCTAssertEqual(sum, suma[t])
                    XCTAssertTrue(a[(t * P + C)..<((t + 1) * P)].allSatisfy { $0 == 0 }, "padding codes must be 0")
                }
            }
        }
    }

    /// Integer GEMM: AVX2 = scalar reference bit for bit, and both = float math on the dequantized operands.
    func checkGEMM(rows: Int, tokens: Int, runs: [Int], mixed: Bool, blocks: [ActivationBlock], extreme: Bool = false,
                   file: StaticString = #filePath, line: UInt = #line) throws {
        let cols = runs.reduce(0, +)
        let p = randomLinear(rows: rows, cols: cols, runs: runs, mixed: mixed, extreme: extreme)
        let kernel = try PackedLinearKernel(PackedPlanes(p), activation: blocks)
        var x = (0..<(tokens * cols)).map { _ in Float.random(in: -1...1, using: &rng) }
        if extreme {    // codes at both ends of every block's range: the most negative products
            for i in x.indices { x[i] = i % 2 == 0 ? -1 : 1e-3 }
        }
        var fast = [Float](repeating: .nan, count: tokens * rows), slow = fast
        x.withUnsafeBufferPointer { kernel.apply($0.baseAddress!, rows: tokens, into: &fast) }
        cq_set_simd(0)
        x.withUnsafeBufferPointer { kernel.apply($0.baseAddress!, rows: tokens, into: &slow) }
        cq_set_simd(1)
        XCTAssertEqual(fast, slow, "AVX2 GEMM differs from the scalar reference", file: file, line: line)
        // Float reference: simulator-style fake-quantized x times Ŵ, in float64.
        var xq = x
        for b in blocks {
            let q = try ActivationQuantizer(bits: b.bits, clipRatio: b.clip, rangeRule: b.minMax ? .minMax : .includeZero)
            try xq.withUnsafeMutableBufferPointer { try q.apply($0.baseAddress! + b.col, rows: tokens, cols: b.count, rowStride: cols) }
        }
        let w = p.dequantized()
        for t in 0..<tokens {
            for r in 0..<rows {
                var d = 0.0, mag = 0.0
                for c in 0..<cols { d += Double(xq[t * cols + c]) * Double(w[r * cols + c]); mag += abs(Double(xq[t * cols + c]) * Double(w[r * cols + c])) }
                XCTAssertEqual(Double(fast[t * rows + r]), d, accuracy: 1e-5 * max(mag, 1e-6), "token \(t) row \(r)", file: file, line: line)
            }
        }
    }

    func testIntegerGEMM() throws {
        // Per channel, 4-bit activations; rows not a multiple of the 4-row tile, odd token counts.
        // Prefill (≥ 8 tokens) unpacks 4-row tiles first; decode reads the nibbles directly.
        for (rows, tokens) in [(1, 1), (7, 1), (13, 3), (8, 2), (5, 5), (9, 17), (12, 8), (4, 131)] {
            try checkGEMM(rows: rows, tokens: tokens, runs: [96], mixed: false, blocks: [ActivationBlock(col: 0, count: 96, bits: 4)])
        }
        // Groups of 64 with 8-bit activations (q − 128 reaches −128).
        try checkGEMM(rows: 9, tokens: 4, runs: [64, 64, 64], mixed: false, blocks: [ActivationBlock(col: 0, count: 192, bits: 8)])
        // ResQ/CoQuant q/k/v: a 4-bit low block and an 8-bit high block (two planes), each its own activation block.
        try checkGEMM(rows: 11, tokens: 19, runs: [56, 8], mixed: true,
                      blocks: [ActivationBlock(col: 0, count: 56, bits: 4), ActivationBlock(col: 56, count: 8, bits: 8)])
        try checkGEMM(rows: 11, tokens: 3, runs: [56, 8], mixed: true,
                      blocks: [ActivationBlock(col: 0, count: 56, bits: 4), ActivationBlock(col: 56, count: 8, bits: 8)])
        // o_proj per head: low/high per head, plain min/max ranges, clip.
        try checkGEMM(rows: 6, tokens: 2, runs: [24, 8, 24, 8], mixed: true,
                      blocks: [ActivationBlock(col: 0, count: 24, bits: 4, minMax: true, clip: 0.9), ActivationBlock(col: 24, count: 8, bits: 8, minMax: true, clip: 0.9),
                               ActivationBlock(col: 32, count: 24, bits: 4, minMax: true, clip: 0.9), ActivationBlock(col: 56, count: 8, bits: 8, minMax: true, clip: 0.9)])
        // One activation block over several weight groups (W4A8 g128-style), not multiples of 32.
        try checkGEMM(rows: 4, tokens: 2, runs: [40, 40, 17], mixed: false, blocks: [ActivationBlock(col: 0, count: 97, bits: 8)])
    }

    /// The int16 saturation bound: 4096 columns of code 15 (and 255 in two planes) against activation codes of
    /// −128 and 127 — 8 chunks of pair sums reach 30 720 in int16 without clamping.
    func testIntegerGEMMExtremeCodes() throws {
        try checkGEMM(rows: 5, tokens: 3, runs: [4096], mixed: false, blocks: [ActivationBlock(col: 0, count: 4096, bits: 8)], extreme: true)
        try checkGEMM(rows: 8, tokens: 10, runs: [4096], mixed: false, blocks: [ActivationBlock(col: 0, count: 4096, bits: 8)], extreme: true)
        try checkGEMM(rows: 4, tokens: 2, runs: [1024, 1024], mixed: true, blocks: [ActivationBlock(col: 0, count: 2048, bits: 8)], extreme: true)
    }

    func testRunStraddlingTwoActivationBlocksIsRefused() {
        let p = PackedPlanes(randomLinear(rows: 2, cols: 64, runs: [64], mixed: false))
        XCTAssertThrowsError(try PackedLinearKernel(p, activation: [ActivationBlock(col: 0, count: 32, bits: 4), ActivationBlock(col: 32, count: 32, bits: 4)]))
    }

    /// Weight-only products: the fp32 GEMV (decode) and the dequantize + sgemm path (prefill) against float math.
    func testWeightOnlyProducts() throws {
        for (runs, mixed) in [([128, 128, 64], false), ([70, 10], true)] {
            let cols = runs.reduce(0, +), rows = 13
            let p = randomLinear(rows: rows, cols: cols, runs: runs, mixed: mixed)
            let kernel = try PackedLinearKernel(PackedPlanes(p), activation: nil)
            let w = p.dequantized()
            for tokens in [1, 3, 9] {
                let x = (0..<(tokens * cols)).map { _ in Float.random(in: -1...1, using: &rng) }
                for simd in [1, 0] {
                    cq_set_simd(Int32(simd))
                    var y = [Float](repeating: .nan, count: tokens * rows)
                    x.withUnsafeBufferPointer { kernel.apply($0.baseAddress!, rows: tokens, into: &y) }
                    cq_set_simd(1)
                    for t in 0..<tokens {
                        for r in 0..<rows {
                            var d = 0.0
                            for c in 0..<cols { d += Double(x[t * cols + c]) * Double(w[r * cols + c]) }
                            XCTAssertEqual(Double(y[t * rows + r]), d, accuracy: 2e-5 * Double(cols), "tokens \(tokens) row \(r) simd \(simd)")
                        }
                    }
                }
            }
        }
    }

    func testInt8Rows() {
        let rows = 9, cols = 40
        var w = (0..<(rows * cols)).map { _ in Float.random(in: -2...2, using: &rng) }
        for c in 0..<cols { w[3 * cols + c] = 0 }       // an all-zero row keeps scale 1 and codes 0
        let table = Int8Rows(quantizing: w, rows: rows, cols: cols)
        let deq = table.dequantized()
        for r in 0..<rows {
            let m = (0..<cols).map { abs(w[r * cols + $0]) }.max()!
            for c in 0..<cols { XCTAssertEqual(deq[r * cols + c], w[r * cols + c], accuracy: m / 254 + 1e-7) }
        }
        XCTAssertTrue(table.codes.allSatisfy { $0 >= -127 })
        let kernel = Int8RowsKernel(table)
        for tokens in [1, 2, 6] {
            let x = (0..<(tokens * cols)).map { _ in Float.random(in: -1...1, using: &rng) }
            var y = [Float](repeating: .nan, count: tokens * rows), ref = y
            x.withUnsafeBufferPointer { kernel.apply($0.baseAddress!, rows: tokens, into: &y) }
            cq_gemv_q8_f32_ref(table.codes.baseAddress!, Int64(cols), table.scales, x, Int64(cols), Int64(tokens), &ref, Int64(rows), 0, Int64(rows))
            for i in y.indices { XCTAssertEqual(y[i], ref[i], accuracy: 1e-4) }
        }
    }

    /// Decode attention over the fp32 cache: AVX2 against the scalar reference (the model tests check it against the
    /// prefill's GEMM path through the KV-cache decode).
    func testDecodeAttention() {
        for (H, KV, hd, start, rows) in [(9, 3, 64, 100, 1), (9, 3, 64, 7, 3), (4, 4, 24, 33, 2), (2, 1, 8, 0, 1), (9, 3, 64, 700, 2), (14, 2, 64, 300, 1)] {
            let n = start + rows
            let q = (0..<(rows * H * hd)).map { _ in Float.random(in: -2...2, using: &rng) }
            let k = (0..<(n * KV * hd)).map { _ in Float.random(in: -2...2, using: &rng) }
            let v = (0..<(n * KV * hd)).map { _ in Float.random(in: -1...1, using: &rng) }
            var fast = [Float](repeating: .nan, count: rows * H * hd), slow = fast
            var scratch = [Float](repeating: 0, count: n)
            attentionDecode(q, k, v, &fast, rows: rows, start: start, heads: H, kvHeads: KV, headDim: hd)
            cq_attention_f32_ref(q, k, v, &slow, Int64(rows), Int64(start), Int32(H), Int32(KV), Int32(hd),
                                 1 / Float(hd).squareRoot(), &scratch, 0, Int32(H))
            for i in fast.indices { XCTAssertEqual(fast[i], slow[i], accuracy: 1e-5, "H \(H) KV \(KV) hd \(hd) start \(start)") }
        }
    }

    /// KV-cache rows: QuaRot's one block per head (keys with 0 in range, values plain min/max), ResQ/CoQuant's low and
    /// 8-bit blocks, and odd widths that leave a nibble unused.
    static let kvFormats: [(hd: Int, keys: [ActivationBlock], values: [ActivationBlock])] = [
        (64, [ActivationBlock(col: 0, count: 64, bits: 4)], [ActivationBlock(col: 0, count: 64, bits: 4, minMax: true)]),
        (64, [ActivationBlock(col: 0, count: 56, bits: 4, clip: 0.95), ActivationBlock(col: 56, count: 8, bits: 8, clip: 0.95)],
         [ActivationBlock(col: 0, count: 56, bits: 4, minMax: true), ActivationBlock(col: 56, count: 8, bits: 8, minMax: true)]),
        (24, [ActivationBlock(col: 0, count: 7, bits: 3), ActivationBlock(col: 7, count: 17, bits: 6)],
         [ActivationBlock(col: 0, count: 13, bits: 2, minMax: true), ActivationBlock(col: 13, count: 11, bits: 8, minMax: true)]),
    ]

    /// Packed KV rows dequantize to the simulator's fake-quantized values bit for bit (AVX2 and scalar), and take
    /// ⌈count/2⌉ bytes per ≤ 4-bit block.
    func testKVCodesEqualTheSimulator() throws {
        for (hd, keys, values) in Self.kvFormats {
            for blocks in [keys, values] {
                let rows = 6
                var x = (0..<(rows * hd)).map { _ in Float.random(in: -3...2, using: &rng) }
                for c in 0..<hd { x[2 * hd + c] = abs(x[2 * hd + c]) + 0.5; x[3 * hd + c] = 0; x[4 * hd + c] = -1.25 }
                var simulated = x
                for b in blocks {
                    let q = try ActivationQuantizer(bits: b.bits, clipRatio: b.clip, rangeRule: b.minMax ? .minMax : .includeZero)
                    try simulated.withUnsafeMutableBufferPointer { try q.apply($0.baseAddress! + b.col, rows: rows, cols: b.count, rowStride: hd) }
                }
                let codec = KVRowCodec(blocks: blocks, headDim: hd)
                XCTAssertEqual(codec.rowBytes, blocks.reduce(0) { $0 + ($1.bits <= 4 ? ($1.count + 1) / 2 : $1.count) })
                for simd in [1, 0] {
                    cq_set_simd(Int32(simd))
                    defer { cq_set_simd(1) }
                    var codes = [UInt8](repeating: 0xAA, count: rows * codec.rowBytes), grids = [Float](repeating: 0, count: rows * codec.gridCount)
                    var out = [Float](repeating: .nan, count: rows * hd)
                    codec.quantize(x, rows: rows, codes: &codes, grids: &grids)
                    codec.dequantize(codes, grids: grids, rows: rows, into: &out)
                    XCTAssertEqual(out, simulated, "blocks \(blocks) simd \(simd)")
                    var y = x
                    y.withUnsafeMutableBufferPointer { codec.roundTrip($0.baseAddress!, rows: rows) }
                    XCTAssertEqual(y, simulated)
                }
            }
        }
    }

    /// Decode attention over a packed cache = the fp32 reference over the dequantized cache, for every split of the
    /// query heads over workers (a group cut between two of them included), AVX2 and scalar.
    func testPackedDecodeAttention() {
        for (hd, keys, values) in Self.kvFormats {
            for (H, KV, start, rows) in [(9, 3, 100, 1), (9, 3, 7, 3), (4, 2, 40, 2), (2, 1, 0, 1)] {
                let n = start + rows, kc = KVRowCodec(blocks: keys, headDim: hd), vc = KVRowCodec(blocks: values, headDim: hd)
                let q = (0..<(rows * H * hd)).map { _ in Float.random(in: -2...2, using: &rng) }
                let k = (0..<(n * KV * hd)).map { _ in Float.random(in: -2...2, using: &rng) }
                let v = (0..<(n * KV * hd)).map { _ in Float.random(in: -1...1, using: &rng) }
                var kcodes = [UInt8](repeating: 0, count: n * KV * kc.rowBytes), kgrids = [Float](repeating: 0, count: n * KV * kc.gridCount)
                var vcodes = [UInt8](repeating: 0, count: n * KV * vc.rowBytes), vgrids = [Float](repeating: 0, count: n * KV * vc.gridCount)
                kc.quantize(k, rows: n * KV, codes: &kcodes, grids: &kgrids)
                vc.quantize(v, rows: n * KV, codes: &vcodes, grids: &vgrids)
                var kd = [Float](repeating: 0, count: n * KV * hd), vd = kd
                kc.dequantize(kcodes, grids: kgrids, rows: n * KV, into: &kd)
                vc.dequantize(vcodes, grids: vgrids, rows: n * KV, into: &vd)
                var expected = [Float](repeating: .nan, count: rows * H * hd), scratch = [Float](repeating: 0, count: n)
                cq_attention_f32_ref(q, kd, vd, &expected, Int64(rows), Int64(start), Int32(H), Int32(KV), Int32(hd),
                                     1 / Float(hd).squareRoot(), &scratch, 0, Int32(H))
                let what = "hd \(hd) H \(H) KV \(KV) start \(start) rows \(rows)"
                for simd in [1, 0] {
                    cq_set_simd(Int32(simd))
                    defer { cq_set_simd(1) }
                    var got = [Float](repeating: .nan, count: rows * H * hd)
                    attentionDecode(q, keys: kcodes, kgrids, kc, values: vcodes, vgrids, vc, &got, rows: rows, start: start, heads: H, kvHeads: KV)
                    for i in got.indices { XCTAssertEqual(got[i], expected[i], accuracy: 1e-5, "\(what) simd \(simd)") }
                    // Shares of positions merged: uneven, one empty for the first rows, one share alone.
                    let kb = kc.blocks.map(\.kernelBlock), vb = vc.blocks.map(\.kernelBlock)
                    for cuts in [[0, n], [0, 1, n], [0, n / 3, n - 1, n]] {
                        let parts = cuts.count - 1, G = H / KV
                        var m = [Float](repeating: 0, count: parts * rows * H), l = m
                        var acc = [Float](repeating: .nan, count: parts * rows * H * hd)
                        var split = [Float](repeating: .nan, count: rows * H * hd)
                        // The view keeps pointers past its initializer: every array it points into is pinned here.
                        kb.withUnsafeBufferPointer { kb in vb.withUnsafeBufferPointer { vb in
                        kcodes.withUnsafeBufferPointer { kcp in vcodes.withUnsafeBufferPointer { vcp in
                        kgrids.withUnsafeBufferPointer { ksp in vgrids.withUnsafeBufferPointer { vsp in
                            var view = cq_kv_view(k: nil, v: nil, kc: kcp.baseAddress, vc: vcp.baseAddress, ksz: ksp.baseAddress,
                                                  vsz: vsp.baseAddress, kb: kb.baseAddress,
                                                  vb: vb.baseAddress, nkb: Int32(kb.count), nvb: Int32(vb.count), kv_heads: Int32(KV), head_dim: Int32(hd))
                            for w in 0..<parts {
                                var s2 = [Float](repeating: 0, count: G * (cuts[w + 1] - cuts[w]) + hd)
                                m.withUnsafeMutableBufferPointer { m in l.withUnsafeMutableBufferPointer { l in acc.withUnsafeMutableBufferPointer { a in
                                    cq_attention_part(q, &view, Int64(rows), Int64(start), Int32(H), 1 / Float(hd).squareRoot(),
                                                      Int64(cuts[w]), Int64(cuts[w + 1]), &s2, m.baseAddress! + w * rows * H,
                                                      l.baseAddress! + w * rows * H, a.baseAddress! + w * rows * H * hd)
                                } } }
                            }
                        } } } } } }
                        cq_attention_merge(Int32(parts), Int64(rows), Int32(H), Int32(hd), m, l, acc, &split)
                        for i in split.indices { XCTAssertEqual(split[i], expected[i], accuracy: 1e-5, "\(what) cuts \(cuts), simd \(simd)") }
                    }
                }
            }
        }
    }

    /// fp16 rows × fp32: AVX2 (F16C) = the scalar reference (whose half → float covers subnormals, zeros, signs) =
    /// float math on Swift's Float16 conversion.
    func testHalfPrecisionRows() {
        let R = 13, C = 70, T = 3
        var bits = (0..<(R * C)).map { _ in Float16(Float.random(in: -4...4, using: &rng)).bitPattern }
        bits[0] = 0x0001; bits[1] = 0x83FF; bits[2] = 0x8000; bits[3] = 0x7BFF; bits[4] = 0x0400   // subnormals, −0, max, min normal
        let x = (0..<(T * C)).map { _ in Float.random(in: -1...1, using: &rng) }
        var expected = [Float](repeating: 0, count: T * R)
        for t in 0..<T { for r in 0..<R {
            var d: Float = 0
            for c in 0..<C { d += Float(Float16(bitPattern: bits[r * C + c])) * x[t * C + c] }
            expected[t * R + r] = d
        } }
        var slow = [Float](repeating: .nan, count: T * R), fast = slow
        cq_gemv_f16_f32_ref(bits, Int64(C), x, Int64(C), Int64(T), &slow, Int64(R), 0, Int64(R))
        XCTAssertEqual(slow, expected, "the reference sums in order, as the loop above")
        cq_gemv_f16_f32(bits, Int64(C), x, Int64(C), Int64(T), &fast, Int64(R), 0, Int64(R))
        for i in fast.indices { XCTAssertEqual(fast[i], expected[i], accuracy: 1e-6 * max(1, abs(expected[i]))) }
    }
}
