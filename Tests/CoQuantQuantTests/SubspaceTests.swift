import CoQuantModel
import CoQuantTensor
import Foundation
import XCTest
@testable import CoQuantQuant

/// ResQ / CoQuant bases and their fusion (COQUANT_RESQ.md §6).
final class SubspaceTests: XCTestCase {
    // MARK: the objective (§1.3, §6.2 (a), (b))

    func testRelativeErrorCoefficients() {
        let expected: [(Int, Double)] = [(1, 1), (2, 1), (3, 0.111111), (4, 1.0 / 49), (6, 1.0 / 961), (8, 6.20001e-5), (16, 0)]
        for (b, v) in expected { XCTAssertEqual(quantRelativeErrorCoefficient(bits: b), v, accuracy: 1e-6, "b=\(b)") }
    }

    static let X = Matrix<Double>(rows: 6, cols: 4, data: [1, 0, 2, 0, 2, 1, 0, 1, 0, 1, 1, 0, 3, 0, 1, 1, 1, 2, 0, 0, 2, 1, 1, 0])
    static let W = Matrix<Double>(rows: 3, cols: 4, data: [0, 1, 0, 2, 1, 0, 0, 3, 0, 2, 1, 1])

    /// The spec's 4 × 4 worked example, to its printed precision.
    func testWorkedExample() throws {
        var Cx = matmul(Self.X, transA: true, Self.X)
        for i in Cx.data.indices { Cx.data[i] /= 6 }
        let Cw = matmul(Self.W, transA: true, Self.W)
        let M = coquantObjective(Cx: Cx, Cw: Cw, high: 1, lowBits: 4)
        let expectedM: [Double] = [0.984127, 0.285714, 0.333333, 0.476190, 0.285714, 0.730159, 0.253968, 0.365079,
                                   0.333333, 0.253968, 0.412698, 0.126984, 0.476190, 0.365079, 0.126984, 1.206349]
        assertClose(M.data, expectedM, atol: 1e-6, "M")
        XCTAssertEqual(try symmetricEigen(M).values.last!, 1.889042, accuracy: 1e-6, "undamped top eigenvalue of M")

        let a = try dampedEigenbasis(Cx), wa = try dampedEigenbasis(M)
        assertClose(a.values, [0.076283, 0.681250, 0.860175, 4.273959], atol: 1e-6, "a_cov eigenvalues")
        assertClose(wa.values, [0.208981, 0.552732, 0.707579, 1.897376], atol: 1e-6, "wa_cov eigenvalues")
        func top(_ P: Matrix<Double>) -> [Double] {
            var v = (0..<4).map { P[$0, 3] }
            if let m = v.max(by: { abs($0) < abs($1) }), m < 0 { v = v.map { -$0 } }
            return v
        }
        assertClose(top(a.P), [0.846895, 0.324519, 0.365718, 0.209062], atol: 1e-6, "a_cov top eigenvector")
        assertClose(top(wa.P), [0.572389, 0.406579, 0.256320, 0.664352], atol: 1e-6, "wa_cov top eigenvector")
        assertClose(top(a.P).map { $0 * $0 }, [0.717230, 0.105313, 0.133750, 0.043707], atol: 1e-6, "a_cov projector diagonal")
        assertClose(top(wa.P).map { $0 * $0 }, [0.327629, 0.165307, 0.065700, 0.441364], atol: 1e-6, "wa_cov projector diagonal")
        // The same vector from the trace-normalised sum C_x/tr C_x + C_w/tr C_w (§1.3 consequence 1).
        var S = Cx
        for i in S.data.indices { S.data[i] = Cx.data[i] / trace(Cx) + Cw.data[i] / trace(Cw) }
        assertClose(top(try dampedEigenbasis(S).P), top(wa.P), atol: 1e-10, "trace-normalised sum")
    }

    /// P_H P_Hᵀ of the top-k columns: the subspace, independent of eigenvector signs.
    func projector(_ P: Matrix<Double>, _ k: Int) -> [Double] {
        let n = P.rows
        return (0..<(n * n)).map { ij in (P.cols - k..<P.cols).reduce(0) { $0 + P[ij / n, $1] * P[ij % n, $1] } }
    }

    /// Bit widths, and rescaling X or W, leave CoQuant's basis unchanged; with WᵀW ∝ I it is ResQ's basis.
    func testCoQuantBasisInvariances() throws {
        var g = SeededGenerator(seed: 3)
        var Xs = randomMatrix(200, 16, &g)
        let W = randomMatrix(24, 16, &g)
        for r in 0..<Xs.rows { Xs.data[r * 16 + 2] *= 6 }    // an outlier channel
        let Cx = matmul(Xs, transA: true, Xs), Cw = matmul(W, transA: true, W)
        let k = 2
        let base = projector(try dampedEigenbasis(coquantObjective(Cx: Cx, Cw: Cw, high: k, lowBits: 4)).P, k)
        for lowBits in [2, 3, 6, 8] {
            let p = projector(try dampedEigenbasis(coquantObjective(Cx: Cx, Cw: Cw, high: k, lowBits: lowBits)).P, k)
            assertClose(p, base, atol: 1e-10, "low bits \(lowBits)")
        }
        for (sx, sw) in [(7.0, 1.0), (1.0, 0.01), (1e3, 1e-3)] {
            var Cx2 = Cx, Cw2 = Cw
            for i in Cx2.data.indices { Cx2.data[i] *= sx * sx }
            for i in Cw2.data.indices { Cw2.data[i] *= sw * sw }
            let p = projector(try dampedEigenbasis(coquantObjective(Cx: Cx2, Cw: Cw2, high: k)).P, k)
            assertClose(p, base, atol: 1e-9, "X scaled by \(sx), W by \(sw)")
        }
        var isotropic = Matrix<Double>(zeros: 16, 16)
        for i in 0..<16 { isotropic[i, i] = 3.5 }
        let wa = projector(try dampedEigenbasis(coquantObjective(Cx: Cx, Cw: isotropic, high: k)).P, k)
        let a = projector(try dampedEigenbasis(Cx).P, k)
        assertClose(wa, a, atol: 1e-10, "WᵀW ∝ I")
        XCTAssertGreaterThan(zip(base, a).map { abs($0 - $1) }.max()!, 1e-3, "with this W the two bases must differ")
    }

    /// The pre-fusion λ compensation (§1.5): with unit norm weights it is plain CoQuant; otherwise U is orthogonal,
    /// its low block spans D·V_L and its high block D⁻¹·V_H, V the CoQuant basis of the unfused statistics
    /// (x = x̂·D, W = W̄·D⁻¹); a zero norm weight is guarded (±1e-6) instead of dividing by zero.
    func testPreFusionLambdaCompensation() throws {
        var gen = SeededGenerator(seed: 5)
        var Xs = randomMatrix(300, 12, &gen)
        let W = randomMatrix(20, 12, &gen)
        for r in 0..<Xs.rows { Xs.data[r * 12 + 4] *= 5 }
        let Cx = matmul(Xs, transA: true, Xs), Cw = matmul(W, transA: true, W)
        let k = 3, n = 12
        let plain = try dampedEigenbasis(coquantObjective(Cx: Cx, Cw: Cw, high: k)).P
        let unit = try preFusionCompensatedBasis(Cx: Cx, Cw: Cw, normWeight: Array(repeating: 1, count: n), high: k)
        assertClose(projector(unit, k), projector(plain, k), atol: 1e-10, "unit norm weights")

        let increasing: [Double] = (0..<n).map { 0.3 + 0.25 * Double($0) }
        let mixedSigns: [Double] = (0..<n).map { j -> Double in j == 7 ? 0 : (j % 2 == 0 ? 1.5 : -0.4) }
        for g in [increasing, mixedSigns] {
            let U = try preFusionCompensatedBasis(Cx: Cx, Cw: Cw, normWeight: g, high: k)
            assertOrthogonal(U, "compensated basis")
            let s = g.map { abs($0) < 1e-6 ? 1e-6 : $0 }
            var CxPhysical = Cx, CwPhysical = Cw
            for i in 0..<n { for j in 0..<n { CxPhysical[i, j] *= s[i] * s[j]; CwPhysical[i, j] /= s[i] * s[j] } }
            let V = try dampedEigenbasis(coquantObjective(Cx: CxPhysical, Cw: CwPhysical, high: k)).P
            // U_Hᵀ·(D·V_L) = 0 and U_Lᵀ·(D⁻¹·V_H) = 0, relative to the columns' norms.
            var worst = 0.0
            for a in 0..<n {
                for b in 0..<n where (a >= n - k) != (b >= n - k) {
                    let lowSide = b < n - k
                    let column = (0..<n).map { lowSide ? s[$0] * V[$0, b] : V[$0, b] / s[$0] }
                    let norm = column.reduce(0) { $0 + $1 * $1 }.squareRoot()
                    let e = abs((0..<n).reduce(0) { $0 + U[$1, a] * column[$1] }) / norm
                    worst = e.isNaN ? e : max(worst, e)    // max(worst, NaN) would drop the NaN
                }
            }
            XCTAssertLessThan(worst, 1e-9, "spans of the compensated blocks, g = \(g)")
            XCTAssertGreaterThan(zip(projector(U, k), projector(plain, k)).map { abs($0 - $1) }.max()!, 1e-3,
                                 "non-unit norm weights change the basis")
        }
    }

    // MARK: mixed-precision weight solvers (§3.1)

    /// GPTQ / CDQuant / RTN with column grids: the high columns land on the 8-bit grid, the rest on the 4-bit one;
    /// an all-low column grid is plain per-channel GPTQ; CDQuant never ends above its GPTQ start.
    func testMixedPrecisionSolvers() throws {
        var g = SeededGenerator(seed: 21)
        let R = 24, C = 48
        let W = randomMatrix(R, C, &g), H = randomHessian(C, &g)
        let low = try QuantGrid.weight(bits: 4, scheme: .signedSymmetric, mse: .reference)
        let high = try QuantGrid.weight(bits: 8, scheme: .signedSymmetric, mse: .reference)
        let highColumns = [3, 11, 19, 27, 35, 43, 44, 45]       // scattered, like o_proj's per-head blocks
        let cg = try ColumnGrids(columns: C, high: highColumns, low: low, highGrid: high)

        var gptq = GPTQ()
        gptq.columnGrids = cg
        let q = try gptq.solve(W: W, H: H, grid: low)
        XCTAssertEqual(q.groupMaxq, [15, 255])
        for r in 0..<R {
            for c in 0..<C {
                let k = cg.group[c]
                XCTAssertLessThanOrEqual(Int(q.codes[r * C + c]), k == 0 ? 15 : 255)
                XCTAssertEqual(q.values[r, c], q.scales[r, k] * (Double(q.codes[r * C + c]) - q.zeros[r, k]), accuracy: 1e-12)
            }
        }
        let cd = try CDQuant(gptq: gptq).solve(W: W, H: H, grid: low)
        XCTAssertLessThanOrEqual(cd.finalLoss!, cd.initialLoss! * (1 + 1e-12))
        for c in highColumns { for r in 0..<R { XCTAssertLessThanOrEqual(Int(cd.codes[r * C + c]), 255) } }
        let rtn = try RTN(columnGrids: cg).solve(W: W, grid: low)
        XCTAssertLessThan(layerLoss(W, q.values, H), layerLoss(W, rtn.values, H), "GPTQ beats RTN on the same grids")
        // The 8-bit columns are much closer to W than the 4-bit ones.
        let err = { (cols: [Int]) in cols.reduce(0.0) { s, c in (0..<R).reduce(s) { $0 + abs(rtn.values[$1, c] - W[$1, c]) } } / Double(cols.count * R) }
        XCTAssertLessThan(err(highColumns) * 8, err((0..<C).filter { !highColumns.contains($0) }))

        var allLow = GPTQ()
        allLow.columnGrids = try ColumnGrids(columns: C, high: [], low: low, highGrid: high)
        XCTAssertEqual(try allLow.solve(W: W, H: H, grid: low).values, try GPTQ().solve(W: W, H: H, grid: low).values)
    }

    // MARK: the synthetic ordering oracle (§6.3)

    /// identity ≫ random rotation ≫ ResQ > CoQuant in relative output error, on the spec's construction.
    func testSyntheticOrderingOracle() throws {
        var g = SeededGenerator(seed: 11)
        let n = 4096, d = 64, m = 96, r = 8
        // X: anisotropic Gaussian in a random basis, plus 3 outlier channels driven by one shared latent.
        let basis = randomOrthogonalMatrix(d, generator: &g)
        var Z = Matrix(rows: n, cols: d, data: g.nextGaussians(n * d))
        for t in 0..<n { for j in 0..<d { Z[t, j] *= 0.3 + 0.7 * Double(j) / Double(d - 1) } }
        var X = Z * basis
        let latent = g.nextGaussians(n)
        for t in 0..<n {
            for (c, gain) in [(5, 12.0), (20, -9.0), (40, 7.0)] { X[t, c] += gain * latent[t] }
        }
        var W = Matrix(rows: m, cols: d, data: g.nextGaussians(m * d).map { 0.05 * $0 })
        for i in 0..<m { for j in 10...15 { W[i, j] *= 8 } }
        let Y = matmul(X, W, transB: true)
        let normY = Y.data.reduce(0) { $0 + $1 * $1 }

        let low = try ActivationQuantizer(bits: 4), high = try ActivationQuantizer(bits: 8)
        let wGrid = try QuantGrid.weight(bits: 4, scheme: .signedSymmetric, mse: .reference)
        let hGrid = try QuantGrid.weight(bits: 8, scheme: .signedSymmetric, mse: .reference)
        func check(_ U: Matrix<Double>, high r: Int) throws -> (predicted: Double, measured: Double) {
            try outputErrorCheck(X: X, W: W, U: U, high: r, activationLow: low, activationHigh: high, weightLow: wGrid, weightHigh: hGrid)
        }
        func error(_ U: Matrix<Double>, high r: Int) throws -> Double { try check(U, high: r).measured }
        let Cx = matmul(X, transA: true, X), Cw = matmul(W, transA: true, W)
        let resqP = try dampedEigenbasis(Cx).P
        let coquantP = try dampedEigenbasis(coquantObjective(Cx: Cx, Cw: Cw, high: r)).P
        var identity = 0.0, random = 0.0, resq = 0.0, coquant = 0.0
        let draws = 5
        for s in 0..<draws {
            var rg = SeededGenerator(seed: UInt64(100 + s))
            let R = blockDiagonal(randomOrthogonalMatrix(d - r, generator: &rg), randomOrthogonalMatrix(r, generator: &rg))
            identity += try error(Matrix.identity(d), high: 0) / Double(draws)
            random += try error(randomOrthogonalMatrix(d, generator: &rg), high: 0) / Double(draws)
            resq += try error(resqP * R, high: r) / Double(draws)
            coquant += try error(coquantP * R, high: r) / Double(draws)
        }
        print(String(format: "relative output error: identity %.4f, random rotation %.4f, ResQ %.4f, CoQuant %.4f (spec: 0.300, 0.082, 0.0058, 0.0016)",
                     identity, random, resq, coquant))
        XCTAssertGreaterThan(identity, 2 * random, "identity ≫ random rotation")
        XCTAssertGreaterThan(random, 3 * resq, "random rotation ≫ ResQ")
        XCTAssertGreaterThan(resq, coquant, "ResQ > CoQuant")

        // The error model is blind to rotations without a subspace (traces are invariant; it has no notion of
        // outliers), ranks random > ResQ > CoQuant as measured, and its J obeys the spec's exact identity
        // J = γ_L·T_x·T_w − tr(U_Hᵀ M U_H) + (γ_L + γ_H)·a_H·b_H, M = γ_L·T_w·C_x + γ_L·T_x·C_w.
        var rg = SeededGenerator(seed: 100)
        let R = blockDiagonal(randomOrthogonalMatrix(d - r, generator: &rg), randomOrthogonalMatrix(r, generator: &rg))
        let predicted = try [(Matrix.identity(d), 0), (randomOrthogonalMatrix(d, generator: &rg), 0), (resqP * R, r), (coquantP * R, r)]
            .map { try check($0.0, high: $0.1).predicted }
        XCTAssertEqual(predicted[0], predicted[1], accuracy: 1e-9 * predicted[0], "predicted: identity = random rotation")
        XCTAssertGreaterThan(predicted[1], predicted[2], "predicted: random rotation > ResQ")
        XCTAssertGreaterThan(predicted[2], predicted[3], "predicted: ResQ > CoQuant")
        let U = coquantP * R
        let XU = X * U, WU = W * U
        func energy(_ A: Matrix<Double>, _ cols: Range<Int>) -> Double { (0..<A.rows).reduce(0) { s, i in cols.reduce(s) { $0 + A[i, $1] * A[i, $1] } } }
        let Tx = energy(XU, 0..<d), Tw = energy(WU, 0..<d), aH = energy(XU, (d - r)..<d), bH = energy(WU, (d - r)..<d)
        let gammaL = 2 * quantRelativeErrorCoefficient(bits: 4) / Double(d - r), gammaH = 2 * quantRelativeErrorCoefficient(bits: 8) / Double(r)
        let M = coquantObjective(Cx: Cx, Cw: Cw, high: r)      // λx·C_x + λw·C_w with λx = γ_L·T_w, λw = γ_L·T_x
        let MU = matmul(U, transA: true, matmul(M, U))
        let captured = ((d - r)..<d).reduce(0) { $0 + MU[$1, $1] }
        let J = gammaL * Tx * Tw - captured + (gammaL + gammaH) * aH * bH
        XCTAssertEqual(predicted[3], J / normY, accuracy: 1e-9 * J / normY, "the spec's exact identity for J")
    }

    /// Spearman's rank correlation: ±1 for monotone series, average ranks for ties.
    func testRankCorrelation() {
        XCTAssertEqual(rankCorrelation([1, 2, 3, 4], [10, 20, 30, 400]), 1, accuracy: 1e-12)
        XCTAssertEqual(rankCorrelation([1, 2, 3, 4], [4, 3, 2, 1]), -1, accuracy: 1e-12)
        // ranks (0.5, 0.5, 2) vs (0, 1, 2): ρ = 0.866025
        XCTAssertEqual(rankCorrelation([5, 5, 9], [1, 2, 3]), 0.8660254, accuracy: 1e-6)
    }

    // MARK: bases and fusion on models

    static let ids = [1, 17, 250, 3, 99, 299, 0, 42, 42, 7, 128]

    /// The statistics' Gram accumulation (float32 products per core, float64 sums) equals XᵀX of a column slice
    /// computed in float64, over two cores' row split and over two calls.
    func testGramOfAColumnSliceAccumulatesXTX() {
        let rows = 1100, cols = 160, offset = 32, width = 64       // rows·width² ≥ 2²² → split over the cores
        var g = SeededGenerator(seed: 3)
        var x = g.nextGaussians(rows * cols).map { Float($0) + 0.5 }
        var G = Matrix<Double>(zeros: width, width)
        x.withUnsafeMutableBufferPointer { p in
            for _ in 0..<2 { addGram(&G, p.baseAddress!, rows: rows, cols: cols, offset: offset, width: width) }
        }
        var worst = 0.0, largest = 0.0
        for i in 0..<width {
            for j in 0..<width {
                var exact = 0.0
                for t in 0..<rows { exact += Double(x[t * cols + offset + i]) * Double(x[t * cols + offset + j]) }
                worst = max(worst, abs(G[i, j] - 2 * exact))
                largest = max(largest, abs(2 * exact))
            }
        }
        XCTAssertLessThan(worst / largest, 1e-5, "float32 products per core stay close to the float64 Gram")
        XCTAssertGreaterThan(largest, 100, "a real sum, not an empty one")
    }

    func windows(_ count: Int, _ length: Int, vocab: Int, seed: UInt64) -> [[Int]] {
        var g = SeededGenerator(seed: seed)
        return (0..<count).map { _ in (0..<length).map { _ in Int(g.next() % UInt64(vocab)) } }
    }

    func assertOrthogonal(_ Q: Matrix<Double>, _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        let I = matmul(Q, transA: true, Q)
        var worst = 0.0
        for i in 0..<Q.cols {
            for j in 0..<Q.cols {
                let e = abs(I[i, j] - (i == j ? 1 : 0))
                worst = e.isNaN ? e : max(worst, e)    // max(worst, NaN) would drop the NaN
            }
        }
        XCTAssertLessThan(worst, 1e-10, "\(what): max |QᵀQ − I| \(worst)", file: file, line: line)
    }

    /// Every basis, R, and fused Q = P·R is orthogonal to 1e-10; at full precision the fused model (centring off)
    /// computes the original function, in both granularities and both objectives, with and without a KV cache.
    func testTinyModelsFusedBasesPreserveFunction() throws {
        for variant in FusionTests.variants {
            let dir = fixturesDir + "/tiny-models/" + variant
            let reference = try ModelLoader.load(dir).model.forward(Self.ids)
            for granularity in BasisGranularity.allCases {
                for objective in [BasisObjective.activation, .weightActivation] {
                    let model = try ModelLoader.load(dir).model
                    let c = model.config
                    fuseNorms(model, centerEmbeddings: false)
                    let stats = SubspaceStatistics.collect(model, windows: windows(4, 32, vocab: c.vocabSize, seed: 1),
                                                           withQueries: true)
                    let bases = try buildBases(stats, model: model, objective: objective, granularity: granularity,
                                               highFraction: 0.125, kvWeightAware: objective == .weightActivation, seed: 7)
                    let what = "\(variant) \(granularity.rawValue) \(objective.rawValue)"
                    for P in bases.attention + bases.mlp { assertOrthogonal(P, what + " P") }
                    for P in bases.values.flatMap({ $0 }) + bases.keys.flatMap({ $0 }) { assertOrthogonal(P, what + " head P") }
                    assertOrthogonal(bases.R1, what + " R1"); assertOrthogonal(bases.R2, what + " R2")
                    assertOrthogonal(bases.attentionRotation(0), what + " Q_a"); assertOrthogonal(bases.valueRotation(0, head: 0), what + " Q_v")
                    XCTAssertTrue(bases.attentionEnergy.allSatisfy { $0 > 0.125 && $0 <= 1 }, "\(what): the top 1/8 captures more than 1/8 of the energy")

                    let online = fuseSubspaceBases(model, bases, centerEmbeddings: false, normsFused: true)
                    installSubspaceHooks(model, online: online, quantizers: nil)
                    XCTAssertEqual(model.layers[0].basisChange1 != nil, granularity == .perLayer, what)
                    XCTAssertLessThan(maxAbsDiff(model.forward(Self.ids), reference), 1e-4, what)
                    let cache = KVCache(config: c, capacity: Self.ids.count)
                    var last: [Float] = []
                    for id in Self.ids { last = model.forward([id], cache: cache, logits: .last) }
                    let V = c.vocabSize
                    XCTAssertLessThan(maxAbsDiff(last, Array(reference[(reference.count - V)...])), 1e-4, what + " decode")
                }
            }
        }
    }

    /// Key bases (Qwen2 fixture: biased keys, 2 KV heads): the granularity's default is the reference's (per-layer
    /// per-head, shared pooled); shared with per-head keys has exactly the per-layer run's key bases and still computes
    /// the original function; pooled keys are one basis for both heads; the bases file keeps the choice.
    func testKeyBasisChoice() throws {
        let dir = fixturesDir + "/tiny-models/c_qwen2_bias_untied"
        let reference = try ModelLoader.load(dir).model.forward(Self.ids)
        let model = try ModelLoader.load(dir).model
        let c = model.config
        fuseNorms(model, centerEmbeddings: false)
        let stats = SubspaceStatistics.collect(model, windows: windows(4, 32, vocab: c.vocabSize, seed: 1), withQueries: false)
        func bases(_ g: BasisGranularity, _ k: KeyBasis?) throws -> SubspaceBases {
            try buildBases(stats, model: model, objective: .activation, granularity: g, keyBasis: k,
                           highFraction: 0.125, kvWeightAware: false, seed: 7)
        }
        let perLayer = try bases(.perLayer, nil), shared = try bases(.shared, nil), sharedPerHead = try bases(.shared, .perHead)
        XCTAssertEqual(perLayer.keyBasis, .perHead)
        XCTAssertEqual(shared.keyBasis, .pooled)
        XCTAssertEqual(try bases(.perLayer, .pooled).keys.map { $0.map(\.data) }, shared.keys.map { $0.map(\.data) })
        XCTAssertEqual(sharedPerHead.keys.map { $0.map(\.data) }, perLayer.keys.map { $0.map(\.data) })
        XCTAssertEqual(sharedPerHead.attention.map(\.data), shared.attention.map(\.data), "the key basis changes nothing else")
        for l in 0..<c.numHiddenLayers {
            XCTAssertEqual(shared.keys[l][0].data, shared.keys[l][1].data, "layer \(l): pooled means one basis for both heads")
            XCTAssertGreaterThan(zip(perLayer.keys[l][0].data, perLayer.keys[l][1].data).map { abs($0 - $1) }.max()!, 1e-3,
                                 "layer \(l): the heads' own bases differ")
            for P in sharedPerHead.keys[l] { assertOrthogonal(P, "layer \(l) per-head key basis") }
        }

        let file = NSTemporaryDirectory() + "coquant-key-basis-\(getpid()).safetensors"
        defer { try? FileManager.default.removeItem(atPath: file) }
        try sharedPerHead.write(to: file, config: c)
        let read = try SubspaceBases.read(file, config: c)
        XCTAssertEqual(read.keyBasis, .perHead)
        XCTAssertEqual(read.keys.map { $0.map(\.data) }, sharedPerHead.keys.map { $0.map(\.data) })

        let online = fuseSubspaceBases(model, sharedPerHead, centerEmbeddings: false, normsFused: true)
        installSubspaceHooks(model, online: online, quantizers: nil)
        XCTAssertLessThan(maxAbsDiff(model.forward(Self.ids), reference), 1e-4, "shared bases with per-head keys")
    }

    /// CoQuant per-layer with the pre-fusion λ compensation: orthogonal bases that differ from the uncompensated
    /// ones (the tiny models' norm weights are not 1), and the fused model still computes the original function.
    func testTinyModelPreFusionCompensation() throws {
        let dir = fixturesDir + "/tiny-models/a_llama_gqa_tied"
        let reference = try ModelLoader.load(dir).model.forward(Self.ids)
        let model = try ModelLoader.load(dir).model
        let norms = model.layers.map { (attention: $0.inputLayernorm.map(Double.init), mlp: $0.postAttentionLayernorm.map(Double.init)) }
        XCTAssertTrue(norms.contains { $0.attention.contains { abs($0 - 1) > 1e-3 } }, "the fixture's norm weights are not all 1")
        fuseNorms(model, centerEmbeddings: false)
        let stats = SubspaceStatistics.collect(model, windows: windows(4, 32, vocab: 300, seed: 1), withQueries: false)
        let plain = try buildBases(stats, model: model, objective: .weightActivation, granularity: .perLayer,
                                   highFraction: 0.125, kvWeightAware: false, seed: 7)
        let bases = try buildBases(stats, model: model, objective: .weightActivation, granularity: .perLayer,
                                   highFraction: 0.125, kvWeightAware: false, preFusionNorms: norms, seed: 7)
        XCTAssertTrue(bases.preFusionCompensation)
        for P in bases.attention + bases.mlp { assertOrthogonal(P, "compensated P") }
        let r = bases.high
        XCTAssertGreaterThan(zip(projector(bases.attention[0], r), projector(plain.attention[0], r)).map { abs($0 - $1) }.max()!, 1e-4)
        let online = fuseSubspaceBases(model, bases, centerEmbeddings: false, normsFused: true)
        installSubspaceHooks(model, online: online, quantizers: nil)
        XCTAssertLessThan(maxAbsDiff(model.forward(Self.ids), reference), 1e-4)
    }

    /// Mixed-precision quantizers leave the low block at 4 bits and the high block at 8: much closer to the fp
    /// function than uniform 4-bit, and the INT8 key rotation is only approximately orthogonal.
    func testTinyModelMixedPrecisionQuantizers() throws {
        let dir = fixturesDir + "/tiny-models/a_llama_gqa_tied"
        let reference = try ModelLoader.load(dir).model.forward(Self.ids)
        let model = try ModelLoader.load(dir).model
        fuseNorms(model, centerEmbeddings: false)
        let stats = SubspaceStatistics.collect(model, windows: windows(4, 32, vocab: 300, seed: 1), withQueries: false)
        let bases = try buildBases(stats, model: model, objective: .weightActivation, granularity: .perLayer,
                                   highFraction: 0.125, kvWeightAware: false, seed: 7)
        var online = fuseSubspaceBases(model, bases, centerEmbeddings: false, normsFused: true)
        let before = online.keyRotations
        online.quantizeKeyRotationsToInt8()
        // Every entry is s·k, k an integer in [−128, 127], s = max|R|/127 over the layer's heads, within s/2 of R.
        for l in before.indices {
            let s = before[l].flatMap { $0 }.map(abs).max()! / 127
            for (rBefore, rAfter) in zip(before[l].flatMap { $0 }, online.keyRotations[l].flatMap { $0 }) {
                let k = rAfter / s
                XCTAssertEqual(k, k.rounded(), accuracy: 1e-3, "layer \(l): \(rAfter) is not on the INT8 grid of step \(s)")
                XCTAssertTrue((-128...127).contains(k.rounded()), "layer \(l): code \(k)")
                XCTAssertLessThanOrEqual(abs(rAfter - rBefore), s / 2 * (1 + 1e-5), "layer \(l): rounding error")
            }
        }
        let Qk = Matrix(rows: 8, cols: 8, data: online.keyRotations[0][0].map(Double.init))
        let I = matmul(Qk, transA: true, Qk)
        let off = (0..<64).map { abs(I.data[$0] - ($0 % 9 == 0 ? 1 : 0)) }.max()!
        XCTAssertGreaterThan(off, 1e-6, "INT8 key rotation is not exactly orthogonal")
        XCTAssertLessThan(off, 5e-2)
        func meanSquaredError(_ a: [Float]) -> Double {
            zip(a, reference).reduce(0) { $0 + Double(($1.0 - $1.1) * ($1.0 - $1.1)) } / Double(a.count)
        }
        installSubspaceHooks(model, online: online, quantizers: try SubspaceQuantizers(activationBits: 4, kvBits: 4))
        let mixed = meanSquaredError(model.forward(Self.ids))
        installSubspaceHooks(model, online: online, quantizers: try SubspaceQuantizers(activationBits: 4, kvBits: 4, highBits: 4))
        let uniform = meanSquaredError(model.forward(Self.ids))
        XCTAssertGreaterThan(mixed, 0, "quantization changes the logits")
        XCTAssertLessThan(mixed, uniform, "8-bit high subspace beats uniform 4-bit")
        // The per-layer basis-change inputs (the residual stream) are rounded at --residual-bits: 16 skips exactly that
        // rounding (the K/V quantizers alone remain), and coarser rounding costs more.
        func kvOnly(residualBits: Int) throws -> Double {
            installSubspaceHooks(model, online: online, quantizers: try SubspaceQuantizers(activationBits: 16, kvBits: 8, residualBits: residualBits))
            return meanSquaredError(model.forward(Self.ids))
        }
        var kvQuantizers = try SubspaceQuantizers(activationBits: 16, kvBits: 8)
        XCTAssertEqual(kvQuantizers.residual?.bits, 8, "the reference's int8 by default")
        kvQuantizers.residual = nil
        installSubspaceHooks(model, online: online, quantizers: kvQuantizers)
        let withoutResidual = meanSquaredError(model.forward(Self.ids))
        XCTAssertEqual(try kvOnly(residualBits: 16), withoutResidual)
        let (r8, r3) = (try kvOnly(residualBits: 8), try kvOnly(residualBits: 3))
        XCTAssertGreaterThan(r8, withoutResidual)
        XCTAssertGreaterThan(r3, r8)
    }

    /// Bad input: a high fraction outside (0, 1) or giving no channel, and calibration shorter than the hidden size.
    func testBadSubspaceInput() throws {
        let model = try ModelLoader.load(fixturesDir + "/tiny-models/a_llama_gqa_tied").model
        for f in [0.0, 1.0, -0.5, 0.05] {      // 0.05·8 = 0.4 → no channel per head
            XCTAssertThrowsError(try highChannels(fraction: f, config: model.config), "fraction \(f)")
        }
        fuseNorms(model, centerEmbeddings: true)
        let short = SubspaceStatistics.collect(model, windows: windows(1, 16, vocab: 300, seed: 4), withQueries: false)
        XCTAssertThrowsError(try buildBases(short, model: model, objective: .activation, granularity: .perLayer,
                                            highFraction: 0.125, kvWeightAware: false, seed: 0)) {
            XCTAssertTrue("\($0)".contains("fewer than the hidden size"), "\($0)")
        }
        let d = model.config.hiddenSize
        let norms = model.layers.map { _ in (attention: [Double](repeating: 1, count: d), mlp: [Double](repeating: 1, count: d)) }
        for (objective, granularity) in [(BasisObjective.activation, BasisGranularity.perLayer), (.weightActivation, .shared)] {
            XCTAssertThrowsError(try buildBases(short, model: model, objective: objective, granularity: granularity, highFraction: 0.125,
                                                kvWeightAware: false, preFusionNorms: norms, seed: 0)) {
                XCTAssertTrue("\($0)".contains("CoQuant's per-layer bases only"), "\($0)")
            }
        }
    }

    /// SmolLM2: the fused model at 16 bits gives the original logits within 1e-3, in both granularities.
    func testSmolLM2FusedBasesPreserveLogits() throws {
        let path = modelsDir + "/SmolLM2-135M-Instruct.Q4_1.gguf"
        try XCTSkipUnless(FileManager.default.fileExists(atPath: path), "run scripts/download-models.sh smollm2")
        let ids = Array(windows(1, 64, vocab: 49152, seed: 5)[0])
        let original = try ModelLoader.load(path).model
        let reference = original.forward(ids)
        let calibration = windows(3, 256, vocab: 49152, seed: 2)
        for granularity in BasisGranularity.allCases {
            let model = try ModelLoader.load(path).model
            fuseNorms(model, centerEmbeddings: false)
            let stats = SubspaceStatistics.collect(model, windows: calibration, withQueries: false)
            let bases = try buildBases(stats, model: model, objective: .weightActivation, granularity: granularity,
                                       highFraction: 0.125, kvWeightAware: false, seed: 0)
            let online = fuseSubspaceBases(model, bases, centerEmbeddings: false, normsFused: true)
            installSubspaceHooks(model, online: online, quantizers: nil)
            let diff = maxAbsDiff(model.forward(ids), reference)
            print("SmolLM2 \(granularity.rawValue) fused bases: max |Δlogit| \(diff)")
            XCTAssertLessThan(diff, 1e-3, granularity.rawValue)
        }
    }
}
