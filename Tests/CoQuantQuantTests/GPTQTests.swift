import CoQuantModel
import CoQuantTensor
import XCTest
@testable import CoQuantQuant

/// H with dead columns fixed (H_jj = 1) and λ added to the diagonal: the H_λ GPTQ minimises (original order).
func dampedHessian(_ H: Matrix<Double>, _ damp: Double) -> Matrix<Double> {
    var h = H
    for j in 0..<h.rows {
        if h[j, j] == 0 { h[j, j] = 1 }
        h[j, j] += damp
    }
    return h
}

/// W with the columns of dead inputs (H_jj = 0) zeroed: the W₀ of the loss identity.
func deadZeroed(_ W: Matrix<Double>, _ H: Matrix<Double>) -> Matrix<Double> {
    var w = W
    for j in 0..<H.rows where H[j, j] == 0 { for r in 0..<w.rows { w[r, j] = 0 } }
    return w
}

/// GPTQ against the float64 mirror of `fasterquant` (gptq.safetensors; README "Suggested tolerances": Q, scale,
/// zero ≤ 1e-12 absolute, codes exact, losses ≤ 1e-9 relative).
final class GPTQOracleTests: XCTestCase {
    func testEveryOracleCase() throws {
        let f = try oracleFile("gptq.safetensors")
        let W = try f.matrix("W")
        let cases = try gptqOracleCases(f)
        XCTAssertEqual(cases.count, 12)
        for oracle in cases {
            let (name, info, grid, solver, H) = (oracle.name, oracle.info, oracle.grid, oracle.gptq, oracle.H)
            let q = try solver.solve(W: W, H: H, grid: grid)

            // A near-tie flip would depend on the BLAS summation order of the lazy updates; none happen here.
            let flips = try assertMatchesOracle(q, f, name)
            if flips > 0 { print("\(name): \(flips) near-tie entries rounded the other way") }
            let C = W.cols
            assertClose((0..<(W.rows * C)).map { q.scale(row: $0 / C, col: $0 % C) }, try f.doubles(name + ".scale_col"),
                        atol: 1e-12, "\(name) scale")
            assertClose((0..<(W.rows * C)).map { q.zero(row: $0 / C, col: $0 % C) }, try f.doubles(name + ".zero_col"),
                        atol: 1e-12, "\(name) zero")
            if f.tensors[name + ".perm"] != nil {
                XCTAssertEqual(q.permutation ?? Array(0..<C), try f.ints(name + ".perm"), "\(name) perm")
            }
            assertRelative(layerLoss(W, q.values, H), try XCTUnwrap(info["loss_tr_WmQ_H_WmQT"] as? Double), 1e-9, "\(name) loss")
            assertRelative(try XCTUnwrap(q.errorSum), try XCTUnwrap(info["gptq_internal_error_sum_Losses"] as? Double),
                           1e-9, "\(name) Σ Losses")
            assertRelative(try XCTUnwrap(q.damp), try XCTUnwrap(info["damp"] as? Double), 1e-12, "\(name) damp")
            XCTAssertEqual(q.dampingEscalations, 0)
            if let dead = info["dead_input_column"] as? Int {
                for r in 0..<W.rows { XCTAssertEqual(q.values[r, dead], 0, "\(name): a dead input ends at 0") }
            }
        }
    }

    /// H from the oracle's X through HessianAccumulator (batches of 64 tokens, 2/n normalisation) is (2/256)·XᵀX:
    /// a positive scale of H changes no GPTQ decision (damping is relative), so the oracle codes come back.
    func testAccumulatedHessianGivesOracleResult() throws {
        let f = try oracleFile("gptq.safetensors")
        let W = try f.matrix("W"), X = try f.matrix("X")
        var acc = HessianAccumulator(columns: X.cols)
        for b in stride(from: 0, to: X.rows, by: 64) {
            acc.add(Matrix(rows: 64, cols: X.cols, data: Array(X.data[(b * X.cols)..<((b + 64) * X.cols)])))
        }
        assertClose(acc.H.data, try f.doubles("H").map { $0 * 2 / 256 }, atol: 1e-12, rtol: 1e-13, "H")
        // The pipeline's path: float32 layer inputs, one float32 ssyrk per batch added into the float64 H.
        var acc32 = HessianAccumulator(columns: X.cols)
        for b in stride(from: 0, to: X.rows, by: 64) {
            X.data[(b * X.cols)..<((b + 64) * X.cols)].map(Float.init).withUnsafeBufferPointer {
                acc32.add($0.baseAddress!, rows: 64)
            }
        }
        assertClose(acc32.H.data, acc.H.data, atol: 1e-6 * acc.H.data.map(abs).max()!, rtol: 1e-5, "H from float32 batches")
        let losses = try XCTUnwrap(try oracleSummary()["gptq"] as? [String: [String: Any]])
        for (name, act, grid) in [("asym4_act1_gs16", true, try QuantGrid.weight(bits: 4, groupSize: 16)),
                                  ("sym4_act0_gsnone", false, try .weight(bits: 4, scheme: .symmetric))] {
            let q = try GPTQ(actOrder: act).solve(W: W, H: acc.H, grid: grid)
            try assertMatchesOracle(q, f, name)
            // Same codes from the float32-batch H (GPTQ_CDQUANT.md §6.1).
            XCTAssertEqual(try GPTQ(actOrder: act).solve(W: W, H: acc32.H, grid: grid).codes, q.codes, "\(name) codes, float32 batches")
            assertRelative(layerLoss(W, q.values, acc.H) * 128, try XCTUnwrap(losses[name]?["loss_tr_WmQ_H_WmQT"] as? Double),
                           1e-9, "\(name) loss")
        }
    }

    /// GPTQ ≤ RTN is only typical (GPTQ_CDQUANT.md §5.2); on the oracle layer it holds for every grid the README
    /// compares (asym4 103.8 vs 121.7, sym4 393.8 vs 462.8, sym4+mse+act-order 211.7 vs 270.2).
    func testGPTQBeatsRTNOnOracleLayer() throws {
        let f = try oracleFile("gptq.safetensors")
        let W = try f.matrix("W"), H = try f.matrix("H")
        for (grid, act) in [(try QuantGrid.weight(bits: 4), false), (try .weight(bits: 4, scheme: .symmetric), false),
                            (try .weight(bits: 4, scheme: .symmetric, mse: .reference), true),
                            (try .weight(bits: 3, groupSize: 16), false)] {
            let rtn = layerLoss(W, try RTN().solve(W: W, grid: grid).values, H)
            let gptq = layerLoss(W, try GPTQ(actOrder: act).solve(W: W, H: H, grid: grid).values, H)
            XCTAssertLessThan(gptq, rtn, "\(grid)")
        }
    }
}

/// The worked example of GPTQ_CDQUANT.md §5.3 and the group-quirk oracle of §5.4 (exact numbers, 10 digits).
final class GPTQWorkedExampleTests: XCTestCase {
    let grid2 = try! QuantGrid.weight(bits: 2)

    func testCholeskyFactorOfDampedInverse() throws {
        let f = try GPTQ().dampedInverseFactor(example4H)
        XCTAssertEqual(f.damp, 0.045, accuracy: 1e-15)
        assertClose(f.U.data, [0.5630496970, -0.2228821055, -0.0557296538, 0.1098001357,
                               0, 0.4802767737, -0.1363454290, -0.0681727145,
                               0, 0, 0.4597338624, -0.3019598440,
                               0, 0, 0, 0.5730682551], atol: 1e-10, "U")
    }

    func testCodesAndLosses() throws {
        let Hl = dampedHessian(example4H, 0.045)
        let gptq = try GPTQ().solve(W: example4W, H: example4H, grid: grid2)
        XCTAssertEqual(gptq.codes, [0, 3, 3, 2, 0, 2, 1, 3])
        assertClose(rowLosses(example4W, gptq.values, Hl), [0.9361916111, 1.5514176111], atol: 1e-10, "GPTQ rows")
        XCTAssertEqual(2 * gptq.errorSum!, 2.4876092222, accuracy: 1e-10)

        let rtn = try RTN().solve(W: example4W, grid: grid2)
        XCTAssertEqual(rtn.codes, [0, 3, 3, 1, 0, 1, 2, 3])
        assertClose(rowLosses(example4W, rtn.values, Hl), [1.0436454444, 1.0162298333], atol: 1e-10, "RTN rows")

        let act = try GPTQ(actOrder: true).solve(W: example4W, H: example4H, grid: grid2)
        XCTAssertEqual(act.permutation, [2, 1, 0, 3])
        XCTAssertEqual(act.codes, [1, 3, 3, 2, 1, 1, 2, 3])
        assertClose(rowLosses(example4W, act.values, Hl), [0.5593954444, 0.8943553889], atol: 1e-10, "act-order rows")

        // percdamp = 0: same codes, exact-rational losses on the undamped H.
        let g0 = try GPTQ(percDamp: 0).solve(W: example4W, H: example4H, grid: grid2)
        XCTAssertEqual(g0.codes, gptq.codes)
        assertClose(rowLosses(example4W, g0.values, example4H), [0.9236111111, 1.5297111111], atol: 1e-10, "GPTQ λ=0")
        assertClose(rowLosses(example4W, rtn.values, example4H), [1.0378444444, 1.0019333333], atol: 1e-10, "RTN λ=0")
    }

    /// §5.4: 2-bit, groups of 2. The reference's dynamic groups depend on B (quirk Q1); the fixed variant equals the
    /// reference at B = 1 or 2 for every B that is a multiple of the group size; static groups never depend on B.
    func testGroupQuirkTable() throws {
        let grid = try QuantGrid.weight(bits: 2, groupSize: 2)
        let Hl = dampedHessian(example4H, 0.045)
        func loss(_ s: GPTQ) throws -> Double { layerLoss(example4W, try s.solve(W: example4W, H: example4H, grid: grid).values, Hl) }
        for act in [false, true] {
            let reference128 = act ? 0.7460367222 : 0.4282754444, smallBlocks = act ? 0.7272269829 : 0.4144245198
            XCTAssertEqual(try loss(GPTQ(blockSize: 128, actOrder: act)), reference128, accuracy: 1e-10)
            XCTAssertEqual(try loss(GPTQ(blockSize: 2, actOrder: act)), smallBlocks, accuracy: 1e-10)
            XCTAssertEqual(try loss(GPTQ(blockSize: 1, actOrder: act)), smallBlocks, accuracy: 1e-10)
            for b in [2, 4, 128] {
                XCTAssertEqual(try loss(GPTQ(blockSize: b, actOrder: act, fixedDynamicGroups: true)), smallBlocks,
                               accuracy: 1e-10, "fixed, B = \(b)")
            }
            for b in [1, 2, 3, 128] {
                XCTAssertEqual(try loss(GPTQ(blockSize: b, actOrder: act, staticGroups: true)), 0.4282754444,
                               accuracy: 1e-10, "static, B = \(b)")
            }
        }
        let q128 = try GPTQ().solve(W: example4W, H: example4H, grid: grid)
        assertClose(Array(q128.values.data[0..<4]), [-0.906667, 0.453333, 0.753333, -0.376667], atol: 1e-6, "B=128 row 0")
        let q1 = try GPTQ(blockSize: 1).solve(W: example4W, H: example4H, grid: grid)
        assertClose(Array(q1.values.data[0..<4]), [-0.906667, 0.453333, 0.801452, -0.400726], atol: 1e-6, "B=1 row 0")
        XCTAssertThrowsError(try GPTQ(blockSize: 3, fixedDynamicGroups: true).solve(W: example4W, H: example4H, grid: grid))
    }
}

/// The exact identities and properties of GPTQ_CDQUANT.md §5.1-§5.2.
final class GPTQInvariantTests: XCTestCase {
    func oracleProblem() throws -> (W: Matrix<Double>, H: Matrix<Double>, deadH: Matrix<Double>) {
        let f = try oracleFile("gptq.safetensors")
        return (try f.matrix("W"), try f.matrix("H"), try f.matrix("dead_column.H"))
    }

    /// tr((W₀ − Q) H_λ (W₀ − Q)ᵀ) = 2 Σ Losses for every blocksize, group setting and act-order.
    func testLossIdentity() throws {
        let (W, H, deadH) = try oracleProblem()
        var checked = 0
        for h in [H, deadH] {
            for grid in [try QuantGrid.weight(bits: 4), try .weight(bits: 3, scheme: .symmetric, groupSize: 16),
                         try .weight(bits: 2, groupSize: 8, mse: .reference)] {
                for act in [false, true] {
                    for b in [1, 7, 16, 128] {
                        for (stat, fixed) in [(false, false), (true, false), (false, true)] where !(fixed && b < 16) {
                            let q = try GPTQ(blockSize: b, actOrder: act, staticGroups: stat, fixedDynamicGroups: fixed)
                                .solve(W: W, H: h, grid: grid)
                            let L = layerLoss(deadZeroed(W, h), q.values, dampedHessian(h, q.damp!))
                            assertRelative(L, 2 * q.errorSum!, 1e-10, "\(grid) act \(act) B \(b) static \(stat) fixed \(fixed)")
                            checked += 1
                        }
                    }
                }
            }
        }
        XCTAssertGreaterThan(checked, 100)
    }

    /// Lazy batching is exact: per channel and with static groups the result does not depend on B, bit for bit.
    /// With the reference's dynamic groups it does (quirk Q1) when g < B; the fixed variant does not.
    func testBlocksizeInvariance() throws {
        let (W, H, _) = try oracleProblem()
        for (grid, stat) in [(try QuantGrid.weight(bits: 4), false), (try .weight(bits: 3, scheme: .symmetric), false),
                             (try .weight(bits: 4, groupSize: 16), true)] {
            for act in [false, true] {
                let base = try GPTQ(blockSize: 128, actOrder: act, staticGroups: stat).solve(W: W, H: H, grid: grid)
                for b in [1, 7, 16, 64] {
                    let q = try GPTQ(blockSize: b, actOrder: act, staticGroups: stat).solve(W: W, H: H, grid: grid)
                    XCTAssertEqual(q.codes, base.codes, "\(grid) act \(act) B \(b)")
                    XCTAssertEqual(q.values, base.values, "\(grid) act \(act) B \(b)")
                }
            }
        }
        let f = try oracleFile("gptq.safetensors")
        let g16 = try QuantGrid.weight(bits: 4, groupSize: 16)
        for act in [false, true] {
            let bs16 = try f.ints("asym4_act\(act ? 1 : 0)_gs16_bs16.codes")
            for b in [16, 32, 64, 128] {
                let fixed = try GPTQ(blockSize: b, actOrder: act, fixedDynamicGroups: true).solve(W: W, H: H, grid: g16)
                XCTAssertEqual(fixed.codes.map(Int.init), bs16, "fixed dynamic groups, act \(act), B \(b)")
            }
            let ref128 = try GPTQ(blockSize: 128, actOrder: act).solve(W: W, H: H, grid: g16)
            XCTAssertNotEqual(ref128.codes.map(Int.init), bs16, "the reference's quirk Q1 shows at B = 128 > g")
        }
    }

    /// Act-order = plain GPTQ on the column-permuted problem, un-permuted; the permutation sorts diag H descending;
    /// g_idx of dynamic groups follows the permuted order.
    func testActOrderRoundTrip() throws {
        let (W, H, _) = try oracleProblem()
        let C = W.cols
        for grid in [try QuantGrid.weight(bits: 4), try .weight(bits: 4, groupSize: 16)] {
            let act = try GPTQ(actOrder: true).solve(W: W, H: H, grid: grid)
            let perm = try XCTUnwrap(act.permutation)
            XCTAssertEqual(perm.sorted(), Array(0..<C))
            for k in 1..<C { XCTAssertGreaterThanOrEqual(H[perm[k - 1], perm[k - 1]], H[perm[k], perm[k]]) }
            var Hp = Matrix<Double>(zeros: C, C)
            for i in 0..<C { for j in 0..<C { Hp[i, j] = H[perm[i], perm[j]] } }
            let plain = try GPTQ().solve(W: permuteColumns(W, perm), H: Hp, grid: grid)
            for r in 0..<W.rows {
                for k in 0..<C {
                    XCTAssertEqual(act.codes[r * C + perm[k]], plain.codes[r * C + k])
                    XCTAssertEqual(act.values[r, perm[k]], plain.values[r, k])
                    XCTAssertEqual(act.scale(row: r, col: perm[k]), plain.scale(row: r, col: k))
                }
            }
            for k in 0..<C { XCTAssertEqual(act.groupIndex[perm[k]], plain.groupIndex[k]) }
        }
    }

    /// Rows are independent: the multi-threaded row split (of the solve, and of the per-channel MSE clip search)
    /// gives each row what solving it alone gives, codes and grid.
    func testRowsAreIndependent() throws {
        var g = SeededGenerator(seed: 5)
        let R = 64, C = 128
        let W = randomMatrix(R, C, &g, scale: 0.1), H = randomHessian(C, &g)
        for grid in [try QuantGrid.weight(bits: 3), try .weight(bits: 4, groupSize: 32), try .weight(bits: 4, mse: .reference)] {
            let all = try GPTQ(blockSize: 32, actOrder: true).solve(W: W, H: H, grid: grid)
            for r in [0, 31, 32, 63] {
                let one = try GPTQ(blockSize: 32, actOrder: true)
                    .solve(W: Matrix(rows: 1, cols: C, data: Array(W.row(r))), H: H, grid: grid)
                XCTAssertEqual(Array(all.codes[(r * C)..<((r + 1) * C)]), one.codes, "row \(r)")
                // Dynamic groups take their range from W after the previous blocks' GEMM updates, which sum in
                // another order for 1 row than for 32 (last-bit differences); per-channel grids come from W itself.
                assertClose((0..<C).map { all.scale(row: r, col: $0) }, (0..<C).map { one.scale(row: 0, col: $0) },
                            atol: grid.granularity == .perRow ? 0 : 1e-15, "row \(r) scales")
            }
        }
    }

    /// GPTQ ≤ RTN as a statistical property over random correlated layers (≥ 95 %), never per layer.
    func testGPTQUsuallyBeatsRTN() throws {
        var g = SeededGenerator(seed: 42)
        var wins = 0
        let layers = 20
        for _ in 0..<layers {
            let W = randomMatrix(16, 48, &g, scale: 0.1), H = randomHessian(48, &g)
            let grid = try QuantGrid.weight(bits: 3)
            let gq = try GPTQ().solve(W: W, H: H, grid: grid)
            let Hl = dampedHessian(H, gq.damp!)
            if layerLoss(W, gq.values, Hl) <= layerLoss(W, try RTN().solve(W: W, grid: grid).values, Hl) { wins += 1 }
        }
        XCTAssertGreaterThanOrEqual(Double(wins) / Double(layers), 0.95)
    }

    /// An indefinite H: percdamp is escalated ×10 and reported; past maxPercDamp a clear error.
    func testDampingEscalation() throws {
        let W = Matrix<Double>(rows: 3, cols: 2, data: [0.1, -0.2, 0.3, 0.05, -0.4, 0.2])
        let grid = try QuantGrid.weight(bits: 4)
        // Eigenvalues −0.05 and 2.05: 0.01·mean diag is not enough, 0.1 is.
        let mild = try GPTQ().solve(W: W, H: Matrix(rows: 2, cols: 2, data: [1, 1.05, 1.05, 1]), grid: grid)
        XCTAssertEqual(mild.dampingEscalations, 1)
        XCTAssertEqual(mild.dampingUsed!, 0.1, accuracy: 1e-15)
        XCTAssertEqual(mild.damp!, 0.1, accuracy: 1e-15)
        // Eigenvalues −2 and 4: needs percdamp 10 (λ = 10), beyond the default limit of 1.
        let bad = Matrix<Double>(rows: 2, cols: 2, data: [1, 3, 3, 1])
        XCTAssertThrowsError(try GPTQ().solve(W: W, H: bad, grid: grid)) { error in
            guard case .choleskyFailed(let p, let k, _)? = error as? QuantError else { return XCTFail("\(error)") }
            XCTAssertEqual(p, 1, accuracy: 1e-12)
            XCTAssertEqual(k, 2)
        }
        let far = try GPTQ(maxPercDamp: 10).solve(W: W, H: bad, grid: grid)
        XCTAssertEqual(far.dampingEscalations, 3)
        XCTAssertEqual(far.dampingUsed!, 10, accuracy: 1e-12)
        XCTAssertTrue(far.values.data.allSatisfy { $0.isFinite })
    }

    func testBadInputs() throws {
        let W = Matrix<Double>(zeros: 2, 4), grid = try QuantGrid.weight(bits: 4)
        XCTAssertThrowsError(try GPTQ().solve(W: W, H: nil, grid: grid)) { XCTAssertEqual($0 as? QuantError, .missingHessian) }
        XCTAssertThrowsError(try GPTQ().solve(W: W, H: .identity(3), grid: grid))
        var nan = Matrix<Double>.identity(4)
        nan[1, 2] = .nan
        XCTAssertThrowsError(try GPTQ().solve(W: W, H: nan, grid: grid)) { XCTAssertEqual($0 as? QuantError, .nonFiniteHessian) }
        XCTAssertThrowsError(try GPTQ().solve(W: W, H: .identity(4), grid: .weight(bits: 4, groupSize: 3)))
        XCTAssertThrowsError(try GPTQ().solve(W: W, H: .identity(4), grid: QuantGrid(bits: 4, granularity: .perTensor)))
        XCTAssertThrowsError(try GPTQ(blockSize: 0).solve(W: W, H: .identity(4), grid: grid))
        // An all-zero H: every column dead, everything ends at 0.
        let q = try GPTQ().solve(W: Matrix(rows: 2, cols: 4, data: [1, 2, 3, 4, 5, 6, 7, 8]), H: Matrix(zeros: 4, 4), grid: grid)
        XCTAssertEqual(q.values.data, Array(repeating: 0, count: 8))
    }
}
