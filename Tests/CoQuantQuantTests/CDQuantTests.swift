import CoQuantModel
import CoQuantTensor
import Foundation
import XCTest
@testable import CoQuantQuant

/// The objective CD and GPTQ share: W₀ (dead inputs zeroed) and H_λ (dead diagonal 1, + λ), from a solver's damp.
func cdObjective(_ W: Matrix<Double>, _ H: Matrix<Double>, _ q: QuantizedWeight) -> (W0: Matrix<Double>, Hl: Matrix<Double>) {
    (deadZeroed(W, H), dampedHessian(H, q.damp!))
}

/// Every entry is s·(code − z) of its own grid, code in 0…maxq.
func assertOnGrid(_ q: QuantizedWeight, maxq: Int, _ what: String, file: StaticString = #filePath, line: UInt = #line) {
    let R = q.values.rows, C = q.values.cols
    var bad = 0
    for r in 0..<R {
        for c in 0..<C {
            let k = q.codes[r * C + c]
            let v = q.scale(row: r, col: c) * (Double(k) - q.zero(row: r, col: c))
            if k < 0 || Int(k) > maxq || v != q.values[r, c] { bad += 1 }
        }
    }
    XCTAssertEqual(bad, 0, "\(what): entries off their grid", file: file, line: line)
}

/// The largest loss decrease any single-coordinate move to any grid point would give, per row (brute force over
/// every (column, code)), from g recomputed from scratch.
func bestSingleMoveGain(_ q: QuantizedWeight, _ W0: Matrix<Double>, _ Hl: Matrix<Double>, maxq: Int) -> [Double] {
    let R = W0.rows, C = W0.cols
    var e = q.values
    for i in e.data.indices { e.data[i] -= W0.data[i] }
    let G = matmul(e, Hl)
    return (0..<R).map { r in
        var best = 0.0
        for i in 0..<C {
            for k in 0...maxq {
                let v = q.scale(row: r, col: i) * (Double(k) - q.zero(row: r, col: i))
                let d = v - q.values[r, i]
                best = max(best, -(2 * d * G[r, i] + d * d * Hl[i, i]))
            }
        }
        return best
    }
}

/// GPTQ_CDQUANT.md §5.3: the 4×4 example, 2-bit asymmetric per channel, percdamp 0.01.
final class CDQuantWorkedExampleTests: XCTestCase {
    let grid2 = try! QuantGrid.weight(bits: 2)
    lazy var Hl = dampedHessian(example4H, 0.045)

    func testGreedyFromGPTQ() throws {
        let q = try CDQuant().solve(W: example4W, H: example4H, grid: grid2)
        XCTAssertEqual(q.codes, [1, 3, 3, 2, 1, 1, 2, 3])
        assertClose(rowLosses(example4W, q.values, Hl), [0.5593954444, 0.8943553889], atol: 1e-10, "CD rows")
        XCTAssertEqual(try XCTUnwrap(q.initialLoss), 2.4876092222, accuracy: 1e-10)
        XCTAssertEqual(try XCTUnwrap(q.finalLoss), 1.4537508333, accuracy: 1e-10)
        XCTAssertEqual(2 * q.errorSum!, 1.4537508333, accuracy: 1e-10)
        XCTAssertEqual(q.moves, 4)                       // row 0: one move, row 1: three
        XCTAssertEqual(q.rowsAtLocalOptimum, 2)
        XCTAssertEqual(q.damp!, 0.045, accuracy: 1e-15)
        assertOnGrid(q, maxq: 3, "example")
    }

    /// The greedy trace: iteration t picks row 0 → i = 0; row 1 → i = 2, then 1, then 0, with the spec's Δ's.
    func testGreedyTrace() throws {
        let history = [2.4876092222, 1.8052930556, 1.5756252778, 1.4537508333]
        let row1 = [[0, 2, 1, 3], [0, 2, 2, 3], [0, 1, 2, 3], [1, 1, 2, 3]]
        for t in 0...5 {
            let q = try CDQuant(budget: .iterations(t)).solve(W: example4W, H: example4H, grid: grid2)
            XCTAssertEqual(layerLoss(example4W, q.values, Hl), history[min(t, 3)], accuracy: 1e-10, "t = \(t)")
            XCTAssertEqual(q.finalLoss!, history[min(t, 3)], accuracy: 1e-10, "t = \(t)")
            XCTAssertEqual(Array(q.codes[0..<4]), t == 0 ? [0, 3, 3, 2] : [1, 3, 3, 2], "row 0, t = \(t)")
            XCTAssertEqual(Array(q.codes[4..<8]), row1[min(t, 3)].map(Int32.init), "row 1, t = \(t)")
            XCTAssertEqual(q.moves, min(t, 1) + min(t, 3))
            XCTAssertEqual(q.rowsAtLocalOptimum, t <= 1 ? 0 : (t <= 3 ? 1 : 2), "t = \(t)")
        }
        let deltas = zip(history, history.dropFirst()).map { $0 - $1 }
        XCTAssertEqual(deltas[0], 0.3767961667 + 0.30552, accuracy: 1e-10)
        XCTAssertEqual(deltas[1], 0.2296677778, accuracy: 1e-10)
        XCTAssertEqual(deltas[2], 0.1218744444, accuracy: 1e-10)
    }

    /// Cyclic CD and BCD end at the same codes; all equal the exhaustive optimum (4⁴ codes per row).
    func testVariantsReachTheExhaustiveOptimum() throws {
        var optimum = [Double](repeating: .infinity, count: 2)
        let gptq = try GPTQ().solve(W: example4W, H: example4H, grid: grid2)
        for r in 0..<2 {
            for n in 0..<256 {
                var q = gptq
                for i in 0..<4 { q.values[r, i] = q.scale(row: r, col: i) * (Double((n >> (2 * i)) & 3) - q.zero(row: r, col: i)) }
                optimum[r] = min(optimum[r], rowLosses(example4W, q.values, Hl)[r])
            }
        }
        assertClose(optimum, [0.5593954444, 0.8943553889], atol: 1e-10, "exhaustive optimum")
        for variant: CDQuant.Variant in [.greedy, .cyclic, .block(size: 2), .block(size: 2, partition: .contiguous),
                                         .block(size: 3, partition: .random(seed: 1)), .block(size: 4)] {
            let q = try CDQuant(variant: variant).solve(W: example4W, H: example4H, grid: grid2)
            XCTAssertEqual(q.codes, [1, 3, 3, 2, 1, 1, 2, 3], "\(variant)")
            XCTAssertEqual(q.finalLoss!, 1.4537508333, accuracy: 1e-10, "\(variant)")
            XCTAssertEqual(q.rowsAtLocalOptimum, 2, "\(variant)")
        }
    }

    /// percdamp = 0: the same codes, the exact-rational optimum on the undamped H.
    func testUndamped() throws {
        let q = try CDQuant(gptq: GPTQ(percDamp: 0)).solve(W: example4W, H: example4H, grid: grid2)
        XCTAssertEqual(q.codes, [1, 3, 3, 2, 1, 1, 2, 3])
        assertClose(rowLosses(example4W, q.values, example4H), [0.5461444444, 0.8794888889], atol: 1e-10, "λ = 0")
        XCTAssertEqual(q.initialLoss!, 2.4533222222, accuracy: 1e-10)
        XCTAssertEqual(q.finalLoss!, 1.4256333333, accuracy: 1e-10)
    }

    /// From RTN (loss 2.0598752778 on H_λ) CD can only go down.
    func testFromRTN() throws {
        let q = try CDQuant(initialization: .rtn).solve(W: example4W, H: example4H, grid: grid2)
        XCTAssertEqual(q.initialLoss!, 2.0598752778, accuracy: 1e-10)
        XCTAssertLessThanOrEqual(q.finalLoss!, 2.0598752778)
        XCTAssertEqual(layerLoss(example4W, q.values, Hl), q.finalLoss!, accuracy: 1e-12)
        XCTAssertEqual(q.damp!, 0.045, accuracy: 1e-15)
        XCTAssertEqual(q.rowsAtLocalOptimum, 2)
        print("CD from RTN on the 4×4 example: \(q.initialLoss!) → \(q.finalLoss!), codes \(q.codes)")
    }
}

final class CDQuantPropertyTests: XCTestCase {
    let variants: [CDQuant.Variant] = [.greedy, .cyclic, .block(size: 2), .block(size: 3, partition: .contiguous),
                                       .block(size: 2, partition: .random(seed: 7))]

    /// Budget 0 returns the start unchanged: GPTQ's (or RTN's) codes, values, grids and permutation, bit for bit.
    func testZeroBudgetEqualsTheStart() throws {
        var g = SeededGenerator(seed: 11)
        let W = randomMatrix(8, 32, &g, scale: 0.1), H = randomHessian(32, &g)
        for grid in [try QuantGrid.weight(bits: 3), try .weight(bits: 4, groupSize: 8), try .weight(bits: 4, scheme: .symmetric, mse: .reference)] {
            for gptq in [GPTQ(), GPTQ(actOrder: true), GPTQ(blockSize: 8, actOrder: true, staticGroups: true)] {
                let ref = try gptq.solve(W: W, H: H, grid: grid)
                for variant in variants {
                    for budget: CDQuant.Budget in [.iterations(0), .perInput(0)] {
                        let q = try CDQuant(variant: variant, budget: budget, gptq: gptq).solve(W: W, H: H, grid: grid)
                        XCTAssertEqual(q.codes, ref.codes)
                        XCTAssertEqual(q.values, ref.values)
                        XCTAssertEqual(q.scales, ref.scales)
                        XCTAssertEqual(q.zeros, ref.zeros)
                        XCTAssertEqual(q.groupIndex, ref.groupIndex)
                        XCTAssertEqual(q.permutation, ref.permutation)
                        XCTAssertEqual(q.damp, ref.damp)
                        XCTAssertEqual(q.moves, 0)
                        XCTAssertEqual(q.rowsAtLocalOptimum, 0)
                        XCTAssertEqual(q.initialLoss!, q.finalLoss!)
                        assertRelative(q.initialLoss!, 2 * ref.errorSum!, 1e-10, "GPTQ loss")
                    }
                }
            }
            let rtn = try RTN().solve(W: W, grid: grid)
            let q = try CDQuant(initialization: .rtn, budget: .iterations(0)).solve(W: W, H: H, grid: grid)
            XCTAssertEqual(q.codes, rtn.codes)
            XCTAssertEqual(q.values, rtn.values)
        }
    }

    /// The loss never increases, checked after every move: budget t is a prefix of budget t + 1 (deterministic), so
    /// the per-row losses for t = 0, 1, 2, … are the losses after each move (each block move, for BCD).
    func testLossNeverIncreases() throws {
        var g = SeededGenerator(seed: 3)
        let R = 5, C = 20
        let W = randomMatrix(R, C, &g, scale: 0.1), H = randomHessian(C, &g)
        for grid in [try QuantGrid.weight(bits: 3), try .weight(bits: 2, groupSize: 5)] {
            for initialization: CDQuant.Initialization in [.gptq, .rtn] {
                for variant in variants {
                    let full = try CDQuant(variant: variant, initialization: initialization, budget: .perInput(50))
                        .solve(W: W, H: H, grid: grid)
                    XCTAssertEqual(full.rowsAtLocalOptimum, R)
                    let (W0, Hl) = cdObjective(W, H, full)
                    var previous = [Double](repeating: .infinity, count: R)
                    var steps = 0, t = 0
                    while true {
                        let q = try CDQuant(variant: variant, initialization: initialization, budget: .iterations(t))
                            .solve(W: W, H: H, grid: grid)
                        let losses = rowLosses(W0, q.values, Hl)
                        for r in 0..<R {
                            XCTAssertLessThanOrEqual(losses[r], previous[r] + 1e-13 * abs(previous[r]),
                                                     "\(variant) \(initialization) \(grid) t \(t) row \(r)")
                        }
                        assertRelative(q.finalLoss!, losses.reduce(0, +), 1e-10, "bookkeeping")
                        assertOnGrid(q, maxq: grid.maxq, "\(variant) t \(t)")
                        previous = losses
                        steps += 1
                        if q.rowsAtLocalOptimum == R {
                            XCTAssertEqual(q.codes, full.codes, "\(variant)")
                            break
                        }
                        t += 1
                    }
                    XCTAssertGreaterThan(steps, 2, "\(variant) \(initialization) made moves")
                }
            }
        }
    }

    /// With a large budget every row stops at a 1-opt point: no single coordinate moved to any grid point of its
    /// grid lowers the row's loss (brute force), for every variant, per channel and grouped, with act-order starts.
    func testConvergedRowsAreOneOpt() throws {
        var g = SeededGenerator(seed: 17)
        let R = 12
        // C = 30 also runs the scalar tail of the 4-lane scan.
        for (C, grid, gptq) in [(48, try QuantGrid.weight(bits: 2), GPTQ()), (48, try .weight(bits: 3, groupSize: 16), GPTQ(actOrder: true)),
                                (48, try .weight(bits: 4, scheme: .symmetric), GPTQ(actOrder: true)),
                                (30, try .weight(bits: 3), GPTQ()), (30, try .weight(bits: 2, groupSize: 10), GPTQ(actOrder: true))] {
            let W = randomMatrix(R, C, &g, scale: 0.1), H = randomHessian(C, &g)
            let start = try gptq.solve(W: W, H: H, grid: grid)
            let (W0, Hl) = cdObjective(W, H, start)
            let startLosses = rowLosses(W0, start.values, Hl)
            for variant in variants {
                let q = try CDQuant(variant: variant, budget: .perInput(20), gptq: gptq).solve(W: W, H: H, grid: grid)
                XCTAssertEqual(q.rowsAtLocalOptimum, R, "\(variant)")
                XCTAssertEqual(q.scales, start.scales)
                XCTAssertEqual(q.groupIndex, start.groupIndex)
                XCTAssertEqual(q.permutation, start.permutation)
                assertOnGrid(q, maxq: grid.maxq, "\(variant)")
                let gains = bestSingleMoveGain(q, W0, Hl, maxq: grid.maxq)
                for r in 0..<R {
                    XCTAssertLessThanOrEqual(gains[r], 1e-10 * startLosses[r], "\(variant) \(grid) row \(r) is not 1-opt")
                }
                XCTAssertLessThanOrEqual(q.finalLoss!, q.initialLoss!)
            }
        }
    }

    /// BCD's window moves change several coordinates at once and so get past 1-opt points: on small, strongly coupled
    /// rows (C = 8, 2-bit) coupled blocks of 4 end strictly below greedy CD on some rows, the total is lower, every
    /// row is still 1-opt, and the loss recomputed after every block move never increases.
    func testBlockMovesGoBeyondOneOpt() throws {
        var g = SeededGenerator(seed: 1)
        let C = 8, R = 200
        let H = randomHessian(C, &g), W = randomMatrix(R, C, &g, scale: 0.1)
        let grid = try QuantGrid.weight(bits: 2)
        let greedy = try CDQuant(budget: .perInput(50)).solve(W: W, H: H, grid: grid)
        let bcd = try CDQuant(variant: .block(size: 4), budget: .perInput(50)).solve(W: W, H: H, grid: grid)
        XCTAssertEqual(greedy.rowsAtLocalOptimum, R)
        XCTAssertEqual(bcd.rowsAtLocalOptimum, R)
        let (W0, Hl) = cdObjective(W, H, greedy)
        let lg = rowLosses(W0, greedy.values, Hl), lb = rowLosses(W0, bcd.values, Hl)
        let escaped = (0..<R).filter { lb[$0] < lg[$0] * (1 - 1e-9) }.count
        XCTAssertGreaterThan(escaped, 0)
        XCTAssertLessThan(lb.reduce(0, +), lg.reduce(0, +))
        XCTAssertTrue(zip(bestSingleMoveGain(bcd, W0, Hl, maxq: 3), lb).allSatisfy { $0 <= 1e-10 * max($1, 1e-300) + 1e-15 })
        print("BCD(4) vs greedy on \(R) rows, C = \(C), 2-bit: \(escaped) rows lower, total \(lb.reduce(0, +)) vs \(lg.reduce(0, +))")

        var previous = [Double](repeating: .infinity, count: R)
        for t in 0... {
            let q = try CDQuant(variant: .block(size: 4), budget: .iterations(t)).solve(W: W, H: H, grid: grid)
            let losses = rowLosses(W0, q.values, Hl)
            for r in 0..<R { XCTAssertLessThanOrEqual(losses[r], previous[r] + 1e-13 * abs(previous[r]), "t \(t) row \(r)") }
            previous = losses
            if q.rowsAtLocalOptimum == R { XCTAssertEqual(q.codes, bcd.codes); break }
        }
    }

    /// The oracle layer (12×64, outlier inputs, edge-case rows, a dead input): for every GPTQ oracle configuration,
    /// CD from GPTQ ≤ GPTQ on the shared H_λ, the reported losses match recomputed ones, and the dead input stays 0.
    func testNeverWorseThanGPTQOnOracleLayer() throws {
        let f = try oracleFile("gptq.safetensors")
        let W = try f.matrix("W")
        for oracle in try gptqOracleCases(f) {
            let (name, info, grid, gptq, H) = (oracle.name, oracle.info, oracle.grid, oracle.gptq, oracle.H)
            let ref = try gptq.solve(W: W, H: H, grid: grid)
            let (W0, Hl) = cdObjective(W, H, ref)
            let gptqLoss = layerLoss(W0, ref.values, Hl)
            var line = "\(name): GPTQ \(String(format: "%.4f", gptqLoss))"
            for variant in variants {
                let q = try CDQuant(variant: variant, gptq: gptq).solve(W: W, H: H, grid: grid)
                let L = layerLoss(W0, q.values, Hl)
                assertRelative(q.initialLoss!, gptqLoss, 1e-9, "\(name) initial")
                assertRelative(q.finalLoss!, L, 1e-9, "\(name) final")
                XCTAssertLessThanOrEqual(L, gptqLoss, "\(name) \(variant)")
                XCTAssertEqual(q.scales, ref.scales)
                assertOnGrid(q, maxq: grid.maxq, name)
                if let dead = info["dead_input_column"] as? Int {
                    for r in 0..<W.rows { XCTAssertEqual(q.values[r, dead], 0, "\(name): the dead input stays at 0") }
                }
                line += ", \(variant) \(String(format: "%.4f", L)) (\(q.moves!) moves)"
            }
            print(line)
        }
    }

    /// Random correlated layers: CD from GPTQ ≤ GPTQ, CD from RTN ≤ RTN, in every case.
    func testNeverWorseThanItsStartOnRandomLayers() throws {
        var g = SeededGenerator(seed: 99)
        var gainGPTQ = 0.0, gainRTN = 0.0
        for layer in 0..<8 {
            let C = 32 + 16 * (layer % 3), R = 10
            let W = randomMatrix(R, C, &g, scale: 0.1), H = randomHessian(C, &g)
            let grid = layer % 2 == 0 ? try QuantGrid.weight(bits: 2 + layer % 3) : try .weight(bits: 3, groupSize: 16)
            for variant in variants {
                let fromGPTQ = try CDQuant(variant: variant, gptq: GPTQ(actOrder: layer % 4 == 1)).solve(W: W, H: H, grid: grid)
                let (W0, Hl) = cdObjective(W, H, fromGPTQ)
                let gptq = try GPTQ(actOrder: layer % 4 == 1).solve(W: W, H: H, grid: grid)
                let lg = layerLoss(W0, gptq.values, Hl), lc = layerLoss(W0, fromGPTQ.values, Hl)
                XCTAssertLessThanOrEqual(lc, lg, "layer \(layer) \(variant)")
                let fromRTN = try CDQuant(variant: variant, initialization: .rtn).solve(W: W, H: H, grid: grid)
                let lr = layerLoss(W0, try RTN().solve(W: W, grid: grid).values, Hl)
                let lcr = layerLoss(W0, fromRTN.values, Hl)
                XCTAssertLessThanOrEqual(lcr, lr, "layer \(layer) \(variant) from RTN")
                assertRelative(fromRTN.initialLoss!, lr, 1e-10, "RTN start")
                if variant == .greedy { gainGPTQ += 1 - lc / lg; gainRTN += 1 - lcr / lr }
            }
        }
        print("greedy CD, mean loss reduction on 8 random layers: \(String(format: "%.1f", 100 * gainGPTQ / 8)) % vs GPTQ, \(String(format: "%.1f", 100 * gainRTN / 8)) % vs RTN")
    }

    /// CD from RTN on the oracle layer ≤ RTN (and the loss on the same H_λ as GPTQ's).
    func testFromRTNOnOracleLayer() throws {
        let f = try oracleFile("gptq.safetensors")
        let W = try f.matrix("W"), H = try f.matrix("H")
        for grid in [try QuantGrid.weight(bits: 4), try .weight(bits: 3, groupSize: 16), try .weight(bits: 4, scheme: .symmetric)] {
            let q = try CDQuant(initialization: .rtn).solve(W: W, H: H, grid: grid)
            let gq = try GPTQ().solve(W: W, H: H, grid: grid)
            XCTAssertEqual(q.damp, gq.damp)
            let (W0, Hl) = cdObjective(W, H, q)
            let rtn = layerLoss(W0, try RTN().solve(W: W, grid: grid).values, Hl)
            XCTAssertLessThanOrEqual(q.finalLoss!, rtn)
            XCTAssertEqual(q.rowsAtLocalOptimum, W.rows)
            print("oracle layer \(grid.bits)-bit: RTN \(rtn), CD from RTN \(q.finalLoss!), GPTQ \(layerLoss(W0, gq.values, Hl))")
        }
    }

    /// Rows are independent: the chunked two-core run gives each row what solving it alone gives.
    func testRowsAreIndependent() throws {
        var g = SeededGenerator(seed: 5)
        let R = 64, C = 128
        let W = randomMatrix(R, C, &g, scale: 0.1), H = randomHessian(C, &g)
        for variant: CDQuant.Variant in [.greedy, .cyclic, .block(size: 2)] {
            let grid = try QuantGrid.weight(bits: 3, groupSize: 32)
            let all = try CDQuant(variant: variant, gptq: GPTQ(actOrder: true)).solve(W: W, H: H, grid: grid)
            for r in [0, 7, 31, 32, 63] {
                let one = try CDQuant(variant: variant, gptq: GPTQ(actOrder: true))
                    .solve(W: Matrix(rows: 1, cols: C, data: Array(W.row(r))), H: H, grid: grid)
                XCTAssertEqual(Array(all.codes[(r * C)..<((r + 1) * C)]), one.codes, "\(variant) row \(r)")
            }
        }
    }

    func testBadInputs() throws {
        let W = example4W, H = example4H, grid = try QuantGrid.weight(bits: 2)
        for solver in [CDQuant(budget: .perInput(-1)), CDQuant(budget: .perInput(.nan)), CDQuant(budget: .perInput(.infinity)),
                       CDQuant(budget: .iterations(-1)), CDQuant(tolerance: -1), CDQuant(tolerance: .nan),
                       CDQuant(variant: .block(size: 0)), CDQuant(variant: .block(size: 7))] {
            XCTAssertThrowsError(try solver.solve(W: W, H: H, grid: grid), "\(solver)") { error in
                guard case .invalidParameter? = error as? QuantError else { return XCTFail("\(error)") }
            }
        }
        XCTAssertThrowsError(try CDQuant().solve(W: W, H: nil, grid: grid)) { XCTAssertEqual($0 as? QuantError, .missingHessian) }
        XCTAssertThrowsError(try CDQuant(initialization: .rtn).solve(W: W, H: .identity(3), grid: grid))
        var nan = H
        nan[1, 2] = .nan
        XCTAssertThrowsError(try CDQuant(initialization: .rtn).solve(W: W, H: nan, grid: grid)) {
            XCTAssertEqual($0 as? QuantError, .nonFiniteHessian)
        }
        XCTAssertThrowsError(try CDQuant().solve(W: W, H: H, grid: .weight(bits: 2, groupSize: 3)))
        XCTAssertThrowsError(try CDQuant(initialization: .rtn).solve(W: W, H: H, grid: QuantGrid(bits: 4, granularity: .perTensor)))
        // An indefinite H: RTN's start climbs GPTQ's damping ladder too, and reports it.
        let W2 = Matrix<Double>(rows: 3, cols: 2, data: [0.1, -0.2, 0.3, 0.05, -0.4, 0.2])
        let mild = Matrix<Double>(rows: 2, cols: 2, data: [1, 1.05, 1.05, 1])
        for initialization: CDQuant.Initialization in [.gptq, .rtn] {
            let q = try CDQuant(initialization: initialization).solve(W: W2, H: mild, grid: .weight(bits: 4))
            XCTAssertEqual(q.dampingEscalations, 1)
            XCTAssertEqual(q.damp!, 0.1, accuracy: 1e-15)
        }
        XCTAssertThrowsError(try CDQuant(initialization: .rtn).solve(W: W2, H: Matrix(rows: 2, cols: 2, data: [1, 3, 3, 1]),
                                                                     grid: .weight(bits: 4)))
        // An all-zero H: every input dead, everything ends at 0 from either start.
        for initialization: CDQuant.Initialization in [.gptq, .rtn] {
            let q = try CDQuant(initialization: initialization)
                .solve(W: Matrix(rows: 2, cols: 4, data: [1, 2, 3, 4, 5, 6, 7, 8]), H: Matrix(zeros: 4, 4), grid: .weight(bits: 4))
            XCTAssertEqual(q.values.data, Array(repeating: 0, count: 8), "\(initialization)")
            XCTAssertEqual(q.finalLoss!, 0, accuracy: 1e-12)
        }
    }
}

/// One layer-sized solve (SmolLM2-135M up/gate: W [1536, 576]; H from 4096 random rows; 4-bit per channel, τ = 1),
/// timed against GPTQ on the same layer. Printed only, no assertion on time.
final class CDQuantTimingTests: XCTestCase {
    func testTimeOneLayer() throws {
        var g = SeededGenerator(seed: 2024)
        let R = 1536, C = 576
        let W = randomMatrix(R, C, &g, scale: 0.05), H = randomHessian(C, &g, rows: 4096)
        let grid = try QuantGrid.weight(bits: 4)
        func seconds(_ body: () throws -> Void) rethrows -> Double {
            let t0 = DispatchTime.now().uptimeNanoseconds
            try body()
            return Double(DispatchTime.now().uptimeNanoseconds - t0) * 1e-9
        }
        func cpuSeconds() -> Double {
            var ts = timespec()
            clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts)
            return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
        }
        var gq: QuantizedWeight!, cd: QuantizedWeight!
        let cpu0 = cpuSeconds()
        let tg = try seconds { gq = try GPTQ().solve(W: W, H: H, grid: grid) }
        let cpu1 = cpuSeconds()
        let tc = try seconds { cd = try CDQuant().solve(W: W, H: H, grid: grid) }
        let cpu2 = cpuSeconds()
        XCTAssertEqual(cd.initialLoss!, 2 * gq.errorSum!, accuracy: 1e-9 * cd.initialLoss!)
        XCTAssertLessThanOrEqual(cd.finalLoss!, cd.initialLoss!)
        let improvement = 100 * (1 - cd.finalLoss! / cd.initialLoss!)
        print(String(format: "CDQuant timing, W %d×%d, 4-bit per channel, τ = 1: wall GPTQ %.3f s, CD total %.3f s (GPTQ init + %.3f s, %.2f× GPTQ); CPU GPTQ %.3f s, CD %.3f s (+%.3f s); loss %.6g → %.6g (−%.2f %%), %.1f moves/row, %d/%d rows 1-opt",
                     R, C, tg, tc, tc - tg, (tc - tg) / tg, cpu1 - cpu0, cpu2 - cpu1, (cpu2 - cpu1) - (cpu1 - cpu0),
                     cd.initialLoss!, cd.finalLoss!, improvement, Double(cd.moves!) / Double(R), cd.rowsAtLocalOptimum!, R))
    }
}
