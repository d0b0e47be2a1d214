import CoQuantModel
import CoQuantTensor
import XCTest
@testable import CoQuantQuant

/// Weight grids against the float64 mirror of GPTQ's quant.py (rtn_quantizer.safetensors) and the worked examples
/// of GPTQ_CDQUANT.md §5.3 and COQUANT_RESQ.md §6.2(e).
final class WeightQuantizerTests: XCTestCase {
    func testRTNOracleCases() throws {
        let f = try oracleFile("rtn_quantizer.safetensors")
        let gf = try oracleFile("gptq.safetensors")
        let W = try f.matrix("W"), H = try gf.matrix("H")
        let rtnLosses = try XCTUnwrap(try oracleSummary()["rtn_loss_tr_WmQ_H_WmQT"] as? [String: Double])
        let cases: [(String, GridScheme, Int, Int?, Bool)] = [
            ("sym4_perchannel", .symmetric, 4, nil, false),
            ("sym4_perchannel_mse", .symmetric, 4, nil, true),
            ("asym4_perchannel", .asymmetric, 4, nil, false),
            ("asym3_group16", .asymmetric, 3, 16, false),
            ("asym4_perchannel_mse", .asymmetric, 4, nil, true),
        ]
        XCTAssertEqual(Set(cases.map(\.0)), Set(rtnLosses.keys), "every oracle case is tested")
        for (name, scheme, bits, group, mse) in cases {
            let grid = try QuantGrid.weight(bits: bits, scheme: scheme, groupSize: group, mse: mse ? .reference : nil)
            let q = try RTN().solve(W: W, grid: grid)
            assertClose(q.scales.data, try f.doubles(name + ".scale"), atol: 1e-12, "\(name) scale")
            assertClose(q.zeros.data, try f.doubles(name + ".zero"), atol: 1e-12, "\(name) zero")
            let flips = try assertMatchesOracle(q, f, name)
            // RTN uses no BLAS: in float64 it reproduces the float64 oracle's ties exactly (a float32 run flips [4, 46]).
            XCTAssertEqual(flips, 0, "\(name)")
            assertRelative(layerLoss(W, q.values, H), try XCTUnwrap(rtnLosses[name]), 1e-9, "\(name) loss")
            XCTAssertEqual(q.groupIndex, (0..<W.cols).map { $0 / (group ?? W.cols) })
        }
    }

    /// GPTQ_CDQUANT.md §5.3, "Quantizer" and "Other quantizer settings on this W".
    func testWorkedExampleGrids() throws {
        func params(_ bits: Int, _ scheme: GridScheme, _ mse: Bool) throws -> QuantizedTensor {
            try quantize(example4W, grid: .weight(bits: bits, scheme: scheme, mse: mse ? .reference : nil))
        }
        let asym = try params(2, .asymmetric, false)
        assertClose(asym.scales.data, [1.49 / 3, 1.9 / 3], atol: 1e-15, "asym 2-bit s")
        XCTAssertEqual(asym.zeros.data, [2, 2])
        let sym = try params(2, .symmetric, false)
        assertClose(sym.scales.data, [0.5066666667, 0.64], atol: 1e-10, "sym s")
        XCTAssertEqual(sym.zeros.data, [2, 2])
        let mse = try params(2, .asymmetric, true)
        assertClose(mse.scales.data, [0.4718333333, 0.5383333333], atol: 1e-10, "mse s")
        XCTAssertEqual(mse.zeros.data, [2, 2])
        assertClose(try params(2, .symmetric, true).scales.data, [0.4712, 0.5376], atol: 1e-10, "sym+mse s")
        let four = try params(4, .asymmetric, false)
        assertClose(four.scales.data, [0.0993333333, 0.1266666667], atol: 1e-10, "4-bit s")
        XCTAssertEqual(four.zeros.data, [8, 8])
        XCTAssertEqual(four.codes, [0, 14, 15, 4, 0, 5, 6, 15])
    }

    /// GGUF-native grids: d placed as llama.cpp's reference quantizer places it, then rounded to fp16 before any code
    /// is chosen, so every (row, group) scale is a half and the values are exactly what the GGUF block decodes to.
    func testGGMLBlockGrids() throws {
        var rng = SeededGenerator(seed: 7)
        let W = Matrix<Double>(rows: 3, cols: 64, data: (0..<192).map { i in i < 32 ? 0 : Double.random(in: -0.2...0.1, using: &rng) })
        for (type, bits) in [(GGMLType.q4_0, 4), (.q5_0, 5), (.q8_0, 8)] {
            let grid = try QuantGrid.weight(bits: bits, scheme: .ggml(type), groupSize: 32)
            let q = try RTN().solve(W: W, grid: grid)
            for r in 0..<3 {
                for g in 0..<2 {
                    let s = q.scales[r, g], z = q.zeros[r, g]
                    XCTAssertEqual(s, Double(Float16(s)), "\(type.name) scale is a half")
                    XCTAssertEqual(z, Double(type.blockZero!))
                    let block = (0..<32).map { W[r, g * 32 + $0] }
                    if r == 0 && g == 0 { XCTAssertEqual(s, 1, "an all-zero block"); continue }
                    let top = block.max { abs($0) < abs($1) }!
                    let d = type == .q8_0 ? abs(top) / 127 : top / -Double((1 << bits) / 2)
                    XCTAssertEqual(s, Double(Float16(d)), "\(type.name) d from the largest magnitude")
                    for c in 0..<32 {
                        let code = q.codes[r * 64 + g * 32 + c]
                        XCTAssertEqual(q.values[r, g * 32 + c], s * (Double(code) - z))
                        XCTAssert((0...((1 << bits) - 1)).contains(Int(code)))
                    }
                    if type != .q8_0 { XCTAssertEqual(q.codes[r * 64 + g * 32 + block.firstIndex(of: top)!], 0, "the extreme takes code 0") }
                }
            }
        }
        XCTAssertThrowsError(try QuantGrid.weight(bits: 4, scheme: .ggml(.q4_0), groupSize: 64))
        XCTAssertThrowsError(try QuantGrid.weight(bits: 5, scheme: .ggml(.q4_0), groupSize: 32))
        XCTAssertThrowsError(try QuantGrid.weight(bits: 4, scheme: .ggml(.q8_K), groupSize: 32))
        XCTAssertThrowsError(try QuantGrid.weight(bits: 4, scheme: .ggml(.q4_K), groupSize: 16))
        XCTAssertThrowsError(try QuantGrid.weight(bits: 4, scheme: .ggml(.q4_0), groupSize: 32, mse: .reference))
    }

    /// Q4_1 / Q5_1 (d·q + m) and the K-quants: whatever the solver (RTN, GPTQ with dynamic or static groups, CDQuant), every
    /// grid is one the block type stores: fp16 d (and dmin, m), and per K super-block integer sub-block scales (and
    /// mins) in the type's range with the largest at the range's end, so that the export needs no rounding; codes in
    /// range, values s·(q − z); RTN's codes are the nearest grid points; GPTQ's layer loss is below RTN's.
    func testGGMLGridsWithMinsAndSuperBlocks() throws {
        var rng = SeededGenerator(seed: 11)
        let R = 4, C = 512
        var W = randomMatrix(R, C, &rng, scale: 0.05)
        for c in stride(from: 0, to: C, by: 37) { for r in 0..<R { W[r, c] *= 6 } }       // outlier columns
        for c in 0..<16 { W[0, c] = 0 }                                                      // a zero sub-block
        for c in 256..<288 { W[1, c] = 0.02 }                                                // a constant sub-block
        let H = randomHessian(C, &rng, rows: 2 * C)
        for type in [GGMLType.q4_1, .q5_1, .q2_K, .q3_K, .q4_K, .q5_K, .q6_K] {
            let bits = type.codeBits!, g = type.subBlockSize!, maxq = (1 << bits) - 1
            let grid = try QuantGrid.weight(bits: bits, scheme: .ggml(type), groupSize: g)
            let rtn = try RTN().solve(W: W, grid: grid)
            let cd = try CDQuant().solve(W: W, H: H, grid: grid)
            let solved = [("rtn", rtn), ("gptq", try GPTQ().solve(W: W, H: H, grid: grid)),
                          ("gptq static", try GPTQ(staticGroups: true).solve(W: W, H: H, grid: grid)), ("cdquant", cd)]
            // CDQuant on a shifted lattice for the fractional zeros: its loss never rises above its GPTQ start.
            XCTAssertLessThanOrEqual(try XCTUnwrap(cd.finalLoss), try XCTUnwrap(cd.initialLoss), type.name)
            XCTAssertGreaterThan(cd.moves ?? 0, 0, "\(type.name): CDQuant moved no code")
            XCTAssertLessThanOrEqual(layerLoss(W, cd.values, H), layerLoss(W, solved[1].1.values, H) * (1 + 1e-12), type.name)
            for (solver, q) in solved {
                let what = "\(type.name) \(solver)"
                for r in 0..<R {
                    if let k = type.kScales {
                        for b in 0..<(C / 256) {
                            let j0 = b * 256 / g, n = 256 / g
                            let s = (0..<n).map { q.scales[r, j0 + $0] }, z = (0..<n).map { q.zeros[r, j0 + $0] }
                            let top = s.max { abs($0) < abs($1) }!
                            let d = top / Double(k.mins ? k.range.upperBound : k.range.lowerBound)
                            XCTAssertEqual(d, Double(Float16(d)), "\(what): d is a half")
                            for j in 0..<n {
                                let sc = s[j] / d
                                XCTAssertEqual(sc, sc.rounded(), "\(what): sub-block scale is an integer multiple of d")
                                XCTAssert(k.range.contains(Int(sc)) && sc != 0, "\(what): sub-block scale \(sc) in range")
                                if k.mins {
                                    let mins = (0..<n).map { s[$0] * z[$0] }
                                    let dmin = mins.max()! / Double(k.range.upperBound)
                                    XCTAssertEqual(dmin, Double(Float16(dmin)), accuracy: 1e-12 * abs(dmin), "\(what): dmin is a half")
                                    let m = mins[j] / Double(Float16(dmin))
                                    if dmin > 0 { XCTAssertEqual(m, m.rounded(), accuracy: 1e-9, "\(what): sub-block min is an integer multiple of dmin") }
                                } else {
                                    XCTAssertEqual(z[j], Double((maxq + 1) / 2))
                                }
                            }
                        }
                    } else {
                        for k in 0..<(C / 32) {
                            let s = q.scales[r, k], m = -s * q.zeros[r, k]
                            XCTAssertEqual(s, Double(Float16(s)), "\(what): d is a half")
                            XCTAssertEqual(m, Double(Float16(m)), accuracy: 1e-12 * abs(m), "\(what): m is a half")
                        }
                    }
                    for c in 0..<C {
                        let code = Int(q.codes[r * C + c]), k = c / g
                        XCTAssert((0...maxq).contains(code), what)
                        XCTAssertEqual(q.values[r, c], q.scales[r, k] * (Double(code) - q.zeros[r, k]), accuracy: 1e-15, what)
                        if solver == "rtn" {
                            let s = abs(q.scales[r, k]), x = W[r, c], v = q.values[r, c]
                            let clipped = code == 0 || code == maxq
                            XCTAssert(clipped || abs(x - v) <= s / 2 * (1 + 1e-9), "\(what): RTN code is the nearest at [\(r), \(c)]")
                        }
                    }
                }
            }
            XCTAssertLessThan(layerLoss(W, solved[1].1.values, H), layerLoss(W, rtn.values, H), "\(type.name): GPTQ below RTN")
        }
    }

    /// The symmetric quirk of quant.py: a row with no negative entry keeps xmin = 0, so its grid is s·{−8…7} with
    /// s = xmax/15 and the largest entries clip to 7s ≈ xmax/2.
    func testSymmetricNonNegativeRowQuirk() throws {
        let x = Matrix<Double>(rows: 1, cols: 4, data: [0, 0.3, 0.6, 1.5])
        let q = try quantize(x, grid: .weight(bits: 4, scheme: .symmetric))
        XCTAssertEqual(q.scales.data[0], 0.1, accuracy: 1e-15)
        XCTAssertEqual(q.zeros.data[0], 8)
        XCTAssertEqual(q.codes, [8, 11, 14, 15])
        XCTAssertEqual(q.values.data[3], 0.7, accuracy: 1e-15)
    }

    /// COQUANT_RESQ.md §6.2(e): the QuaRot/CoQuant symmetric weight grid (s = max|w|/7), with and without MSE clip.
    func testSignedSymmetricMSEExample() throws {
        let w = Matrix<Double>(rows: 1, cols: 8, data: [1.0, 0.41, -0.38, 0.33, -0.45, 0.29, 0.36, -0.43])
        func err(_ q: QuantizedTensor) -> Double {
            zip(q.values.data, w.data).reduce(0) { $0 + pow(abs($1.0 - $1.1), 2.4) }
        }
        let plain = try quantize(w, grid: .weight(bits: 4, scheme: .signedSymmetric))
        XCTAssertEqual(plain.scales.data[0], 1.0 / 7, accuracy: 1e-15)
        XCTAssertEqual(plain.zeros.data[0], 8)
        XCTAssertEqual(err(plain), 0.003048, accuracy: 5e-7)
        let clipped = try quantize(w, grid: .weight(bits: 4, scheme: .signedSymmetric, mse: .reference))
        XCTAssertEqual(clipped.scales.data[0], 0.14, accuracy: 1e-12)
        assertClose(clipped.values.data, [0.98, 0.42, -0.42, 0.28, -0.42, 0.28, 0.42, -0.42], atol: 1e-12, "ŵ")
        XCTAssertEqual(err(clipped), 0.002717, accuracy: 5e-7)
    }

    /// INT8 symmetric per tensor (the K rotation matrix of COQUANT_RESQ.md §3.3): s = max|x|/127.
    func testPerTensorInt8() throws {
        let x = Matrix<Double>(rows: 2, cols: 2, data: [0.5, -1.27, 0.01, 1.0])
        let q = try quantize(x, grid: QuantGrid(bits: 8, scheme: .signedSymmetric, granularity: .perTensor))
        XCTAssertEqual(q.scales.rows, 1)
        XCTAssertEqual(q.scales.data[0], 0.01, accuracy: 1e-16)
        XCTAssertEqual(q.codes.map { Int($0) - 128 }, [50, -127, 1, 100])
        assertClose(q.values.data, x.data, atol: 1e-15, "representable values are fixed points")
    }

    /// 8-bit RTN of values already on an 8-bit grid is a fixed point (COQUANT_RESQ.md §6.1 item 8), and every
    /// output is s·(k − z) with k an integer in 0…maxq (GPTQ_CDQUANT.md §5.2).
    func testOutputsOnGrid() throws {
        var g = SeededGenerator(seed: 7)
        let x = randomMatrix(5, 32, &g)
        for grid in [try QuantGrid.weight(bits: 3, groupSize: 8), try .weight(bits: 5, scheme: .symmetric, mse: .reference),
                     try .activation(bits: 4, groupSize: 16, clipRatio: 0.9)] {
            let q = try quantize(x, grid: grid)
            for i in x.data.indices {
                let k = Int(q.codes[i]), r = i / 32, grp = (i % 32) / q.groupSize
                XCTAssert((0...grid.maxq).contains(k))
                XCTAssertEqual(q.values.data[i], q.scales[r, grp] * (Double(k) - q.zeros[r, grp]))
            }
        }
        // Values on an 8-bit grid whose ends are hit (codes 0 and 255) come back unchanged.
        var k = (0..<30).map { _ in Double(g.next() % 256) }
        k[0] = 0; k[1] = 255
        let onGrid = Matrix(rows: 1, cols: 30, data: k.map { 0.01 * ($0 - 100) })
        let q = try quantize(onGrid, grid: .weight(bits: 8))
        XCTAssertEqual(q.zeros.data, [100])
        assertClose(q.values.data, onGrid.data, atol: 1e-12, "8-bit fixed point")
    }

    func testBadInputs() throws {
        for bits in [0, 1, 9, 16] {
            XCTAssertThrowsError(try QuantGrid(bits: bits)) { XCTAssertEqual($0 as? QuantError, .unsupportedBits(bits)) }
            XCTAssertThrowsError(try ActivationQuantizer(bits: bits)) {
                XCTAssertEqual($0 as? QuantError, .unsupportedBits(bits))
            }
        }
        let x = Matrix<Double>(zeros: 2, 8)
        XCTAssertThrowsError(try quantize(x, grid: .weight(bits: 4, groupSize: 3))) {
            XCTAssertEqual($0 as? QuantError, .groupSizeDoesNotDivide(groupSize: 3, dimension: 8))
        }
        XCTAssertThrowsError(try RTN().solve(W: x, grid: .weight(bits: 4, groupSize: 5)))
        XCTAssertThrowsError(try QuantGrid.weight(bits: 4, groupSize: 0))
        XCTAssertThrowsError(try QuantGrid.activation(bits: 4, clipRatio: 0))
        XCTAssertThrowsError(try QuantGrid.activation(bits: 4, clipRatio: 1.5))
        XCTAssertThrowsError(try ActivationQuantizer(bits: 4, clipRatio: 1.01))
        XCTAssertThrowsError(try QuantGrid.weight(bits: 4, mse: MSEClipSearch(grid: 0)))
        XCTAssertThrowsError(try RTN().solve(W: x, grid: QuantGrid(bits: 4, granularity: .perTensor)))
        // The errors read as sentences.
        XCTAssertEqual(QuantError.unsupportedBits(9).description, "unsupported bit width 9: the uniform grids support 2 to 8 bits")
    }
}

/// Activation / KV fake quantization: the Float32 in-place path and the float64 grid (COQUANT_RESQ.md §3.2, §6.2).
final class ActivationQuantizerTests: XCTestCase {
    func fakeQuant(_ x: [Float], rows: Int, _ q: ActivationQuantizer) throws -> [Float] {
        var y = x
        try y.withUnsafeMutableBufferPointer { try q.apply($0.baseAddress!, rows: rows, cols: x.count / rows) }
        return y
    }

    func assertNear(_ a: [Float], _ b: [Double], _ tol: Double, _ what: String, line: UInt = #line) {
        XCTAssertEqual(a.count, b.count, what, line: line)
        for i in a.indices { XCTAssertEqual(Double(a[i]), b[i], accuracy: tol, "\(what)[\(i)]", line: line) }
    }

    /// §6.2(c): per-token 4-bit asym; the max is not hit because z is rounded; per-token forces xmin to 0, the
    /// group-wise path does not.
    func testPerTokenAsymmetric4BitHandChecked() throws {
        let perToken = try ActivationQuantizer(bits: 4)
        let x: [Float] = [-1, 0.2, 0.5, 3]
        // s = 4/15, z = round(3.75) = 4, codes [0, 5, 6, 15].
        assertNear(try fakeQuant(x, rows: 1, perToken), [-16, 4, 8, 44].map { $0 / 15 }, 1e-6, "x")
        // y: xmin forced to 0, s = 4/15, z = 0. y[2]/s = 2/(4/15) = 7.5 is an exact tie in real arithmetic, decided
        // by rounding noise: in float64 (the spec's transcription) 4/15 rounds down and 2/s = 7.500000000000001
        // → code 8; in float32 (the reference's per-token path, and this one) 4/15 rounds up and 2/s = 7.4999995
        // → code 7. Codes [2, 4, 8, 15] in float64, [2, 4, 7, 15] in float32.
        let y: [Float] = [0.5, 1, 2, 4]
        let s32 = Float(4) / 15
        assertNear(try fakeQuant(y, rows: 1, perToken), [2, 4, 7, 15].map { Double(s32 * $0) }, 1e-7, "y per token")
        // Group-wise: s = 3.5/15, z = round(−2.142857) = −2, codes [0, 2, 7, 15].
        let group = try ActivationQuantizer(bits: 4, groupSize: 4)
        XCTAssertEqual(group.rangeRule, .minMax)
        assertNear(try fakeQuant(y, rows: 1, group), [0.466667, 0.933333, 2.1, 3.966667], 1e-6, "y group-wise")
        // Both tokens at once, each its own scale; and the float64 grid (with its own side of the tie).
        assertNear(try fakeQuant(x + y, rows: 2, perToken),
                    [-16, 4, 8, 44].map { $0 / 15 } + [2, 4, 7, 15].map { Double(s32 * $0) }, 1e-6, "two tokens")
        let q64 = try quantize(Matrix(rows: 2, cols: 4, data: (x + y).map(Double.init)), grid: perToken.grid)
        XCTAssertEqual(q64.codes, [0, 5, 6, 15, 2, 4, 8, 15])
        XCTAssertEqual(q64.zeros.data, [4, 0])
        assertClose(Array(q64.values.data[4...]), [0.533333, 1.066667, 2.133333, 4.0], atol: 1e-6, "y float64")
    }

    /// Clip ratio 0.9 on x = [−1, 0.2, 0.5, 3]: range [−0.9, 2.7], s = 0.24, z = round(3.75) = 4; 3/0.24 = 12.5
    /// rounds to 12 (half to even), 12 + 4 = 16 clamps to 15: codes [0, 5, 6, 15].
    func testClipRatio() throws {
        let q = try ActivationQuantizer(bits: 4, clipRatio: 0.9)
        assertNear(try fakeQuant([-1, 0.2, 0.5, 3], rows: 1, q), [-0.96, 0.24, 0.48, 2.64], 1e-6, "clipped")
        let q64 = try quantize(Matrix(rows: 1, cols: 4, data: [-1, 0.2, 0.5, 3]), grid: q.grid)
        XCTAssertEqual(q64.scales.data[0], 0.24, accuracy: 1e-7)   // Double(Float(0.9)) · 4 / 15
        XCTAssertEqual(q64.codes, [0, 5, 6, 15])
    }

    /// Groups of 4 along a token: each group its own scale (here the group-wise rule, no forced zero).
    func testGroupSize() throws {
        let q = try ActivationQuantizer(bits: 4, groupSize: 4)
        let token: [Float] = [0.5, 1, 2, 4, -1, 0.2, 0.5, 3]
        assertNear(try fakeQuant(token, rows: 1, q),
                    [0.466667, 0.933333, 2.1, 3.966667] + [-16, 4, 8, 44].map { $0 / 15 }, 1e-6, "groups")
        // The K-cache variant: per (token, head) with 0 forced into the range.
        let k = try ActivationQuantizer(bits: 4, groupSize: 4, rangeRule: .includeZero)
        let s32 = Float(4) / 15     // 2/s is the float32 side of the 7.5 tie (see the test above)
        assertNear(try fakeQuant(token, rows: 1, k), [2, 4, 7, 15].map { Double(s32 * $0) } + [-16, 4, 8, 44].map { $0 / 15 },
                    1e-6, "K groups")
        var bad: [Float] = Array(repeating: 1, count: 10)
        XCTAssertThrowsError(try bad.withUnsafeMutableBufferPointer { try q.apply($0.baseAddress!, rows: 2, cols: 5) }) {
            XCTAssertEqual($0 as? QuantError, .groupSizeDoesNotDivide(groupSize: 4, dimension: 5))
        }
    }

    /// §6.2(d): one token, last 2 of 8 channels at 8 bits with their own scale, quantized as column ranges of the
    /// same buffer through rowStride; two tokens so the stride is exercised.
    func testMixedPrecisionThroughRowStride() throws {
        let t: [Float] = [0.10, -0.30, 0.25, 0.05, -0.15, 0.20, 6.0, -4.5]
        var buf = t + t.map { 2 * $0 }
        try buf.withUnsafeMutableBufferPointer { p in
            try ActivationQuantizer(bits: 4).apply(p.baseAddress!, rows: 2, cols: 6, rowStride: 8)
            try ActivationQuantizer(bits: 8).apply(p.baseAddress! + 6, rows: 2, cols: 2, rowStride: 8)
        }
        let expected = [0.11, -0.293333, 0.256667, 0.036667, -0.146667, 0.183333, 6.011765, -4.488235]
        assertNear(Array(buf[0..<8]), expected, 1e-6, "token 0")
        assertNear(Array(buf[8..<16]), expected.map { 2 * $0 }, 2e-6, "token 1 (scale-equivariant)")
        let err = zip(buf[0..<8], t).reduce(0.0) { $0 + Double(($1.0 - $1.1) * ($1.0 - $1.1)) }
        XCTAssertEqual(err, 0.000932, accuracy: 1e-6)
        // Uniform 4-bit over the whole token instead.
        assertNear(try fakeQuant(t, rows: 1, ActivationQuantizer(bits: 4)), [0, 0, 0, 0, 0, 0, 6.3, -4.2], 1e-6, "uniform")
    }

    /// The Float32 path agrees with the float64 grid on random data, except rare one-step flips at near ties.
    func testFloat32PathMatchesFloat64Grid() throws {
        var g = SeededGenerator(seed: 11)
        let rows = 37, cols = 96
        let x = randomMatrix(rows, cols, &g, scale: 3)
        for (group, clip, rule) in [(nil, 1.0, nil), (32, 0.9, nil), (32, 0.95, RangeRule.includeZero), (nil, 0.8, .minMax)] as [(Int?, Double, RangeRule?)] {
            let aq = try ActivationQuantizer(bits: 4, groupSize: group, clipRatio: Float(clip), rangeRule: rule)
            let ref = try quantize(x, grid: aq.grid)
            let y = try fakeQuant(x.data.map(Float.init), rows: rows, aq)
            var flips = 0
            for i in y.indices {
                let s = ref.scales[i / cols, (i % cols) / ref.groupSize]
                let d = abs(Double(y[i]) - ref.values.data[i])
                if d > 1e-5 { flips += 1; XCTAssertEqual(d, s, accuracy: 1e-5) }
            }
            XCTAssertLessThanOrEqual(flips, 2, "group \(String(describing: group)) clip \(clip)")
        }
    }
}

final class HessianAccumulatorTests: XCTestCase {
    /// Running average H ← H·n/(n+m) + (2/(n+m)) XᵀX equals (2/N) Σ x xᵀ over everything seen.
    func testRunningAverage() throws {
        var g = SeededGenerator(seed: 3)
        let a = randomMatrix(6, 5, &g), b = randomMatrix(3, 5, &g)
        var acc = HessianAccumulator(columns: 5)
        acc.add(a)
        acc.add(b.data.map(Float.init), rows: 3)
        var expected = matmul(a, transA: true, a)
        let bf = Matrix(rows: 3, cols: 5, data: b.data.map { Double(Float($0)) })
        gemm(bf, transA: true, bf, beta: 1, into: &expected)
        XCTAssertEqual(acc.samples, 9)
        // The float32 batch is multiplied in float32 (ssyrk) and added into the float64 H: float32 accuracy.
        assertClose(acc.H.data, expected.data.map { $0 * 2 / 9 }, atol: 1e-6, "H")
        // The reference counts sequences, not tokens: 2 sequences of 3 tokens, then 1.
        var seq = HessianAccumulator(columns: 5)
        seq.add(a, samples: 2)
        seq.add(bf, samples: 1)
        assertClose(seq.H.data, expected.data.map { $0 * 2 / 3 }, atol: 1e-14, "H per sequence")
        for i in 0..<5 { for j in 0..<5 { XCTAssertEqual(acc.H[i, j], acc.H[j, i]) } }
        // Float32 batches only: the same as the float64 path on the same (float32-representable) values.
        var f32 = HessianAccumulator(columns: 5), f64 = HessianAccumulator(columns: 5)
        for batch in [a, b, a] {
            let x = batch.data.map(Float.init)
            f32.add(x, rows: batch.rows)
            f64.add(Matrix(rows: batch.rows, cols: 5, data: x.map(Double.init)))
        }
        assertClose(f32.H.data, f64.H.data, atol: 1e-6, rtol: 1e-6, "float32 batches")
        XCTAssertNotEqual(f32.H.data, f64.H.data, "the float32 path really multiplies in float32")
    }
}

extension HessianAccumulator {
    mutating func add(_ x: [Float], rows: Int) {
        x.withUnsafeBufferPointer { add($0.baseAddress!, rows: rows) }
    }
}
