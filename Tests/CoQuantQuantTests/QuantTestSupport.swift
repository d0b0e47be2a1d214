import CoQuantModel
import CoQuantTensor
import Foundation
import XCTest
import CoQuantQuant

/// `Tests/Fixtures/quant-oracles`: float64 oracles for GPTQ's quantizer and `fasterquant` (see its README).
let quantOraclesDir = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .appendingPathComponent("Fixtures/quant-oracles").path

func oracleFile(_ name: String) throws -> SafeTensorsFile {
    try SafeTensorsFile(path: quantOraclesDir + "/" + name)
}

/// summary.json (specs and losses of every oracle case).
func oracleSummary() throws -> [String: Any] {
    let data = try Data(contentsOf: URL(fileURLWithPath: quantOraclesDir + "/summary.json"))
    return try XCTUnwrap(JSONSerialization.jsonObject(with: data) as? [String: Any])
}

extension SafeTensorsFile {
    /// A 2-D float tensor as a float64 matrix.
    func matrix(_ name: String) throws -> Matrix<Double> {
        let shape = try XCTUnwrap(tensors[name]?.shape, "no tensor \(name)")
        return Matrix(rows: shape[0], cols: shape.count > 1 ? shape[1] : 1, data: try doubles(name))
    }
}

/// Asserts |a − b| ≤ atol + rtol·|b| element-wise and reports the worst element.
func assertClose(_ a: [Double], _ b: [Double], atol: Double, rtol: Double = 0, _ what: String,
                 file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertEqual(a.count, b.count, "\(what): length", file: file, line: line)
    var worst = 0.0, worstIndex = 0, ok = true
    for i in 0..<min(a.count, b.count) {
        let e = abs(a[i] - b[i])
        if !(e <= atol + rtol * abs(b[i])) { ok = false }
        if e > worst || e.isNaN { worst = e; worstIndex = i }
    }
    XCTAssertTrue(ok, "\(what): max |Δ| \(worst) at \(worstIndex)", file: file, line: line)
}

func assertRelative(_ a: Double, _ b: Double, _ rtol: Double, _ what: String,
                    file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertLessThanOrEqual(abs(a - b), rtol * abs(b), "\(what): \(a) vs \(b)", file: file, line: line)
}

func randomMatrix(_ r: Int, _ c: Int, _ g: inout SeededGenerator, scale: Double = 1) -> Matrix<Double> {
    Matrix(rows: r, cols: c, data: (0..<(r * c)).map { _ in (g.nextDouble() * 2 - 1) * scale })
}

/// A correlated, well-scaled SPD H = XᵀX from n random rows, a few input columns boosted as outliers.
func randomHessian(_ c: Int, _ g: inout SeededGenerator, rows n: Int = 0) -> Matrix<Double> {
    var x = randomMatrix(max(n, 2 * c), c, &g)
    let mix = randomMatrix(c, c, &g, scale: 0.3)
    x = matmul(x, mix)
    for r in 0..<x.rows { x[r, 1 % c] *= 8; x[r, (c / 2) % c] *= 5 }
    return matmul(x, transA: true, x)
}

/// The 4×4 worked example of GPTQ_CDQUANT.md §5.3.
let example4H = Matrix<Double>(rows: 4, cols: 4, data: [4, 2, 1, 0, 2, 5, 2, 1, 1, 2, 6, 2, 0, 1, 2, 3])
let example4W = Matrix<Double>(rows: 2, cols: 4, data: [-0.76, 0.60, 0.73, -0.40, -0.96, -0.42, -0.29, 0.94])

/// Compares a solver's output with an oracle case (README "Suggested tolerances"): codes exact and Q within 1e-12,
/// except that an entry flagged `near_tie` (x/s within 1e-9 of k + ½) may round the other way, by one code = one
/// scale. Returns how many entries did.
@discardableResult
func assertMatchesOracle(_ q: QuantizedWeight, _ f: SafeTensorsFile, _ name: String,
                         file: StaticString = #filePath, line: UInt = #line) throws -> Int {
    let codes = try f.ints(name + ".codes"), Q = try f.doubles(name + ".Q"), tie = try f.ints(name + ".near_tie")
    let C = q.values.cols
    XCTAssertEqual(codes.count, q.codes.count, "\(name): size", file: file, line: line)
    var flips = 0
    for i in codes.indices {
        let at = "\(name) [\(i / C), \(i % C)]"
        if Int(q.codes[i]) == codes[i] {
            XCTAssertEqual(q.values.data[i], Q[i], accuracy: 1e-12, "\(at) Q", file: file, line: line)
        } else {
            flips += 1
            XCTAssertEqual(tie[i], 1, "\(at) code \(q.codes[i]) vs \(codes[i]) is not a near tie", file: file, line: line)
            XCTAssertEqual(abs(Int(q.codes[i]) - codes[i]), 1, at, file: file, line: line)
            XCTAssertEqual(abs(q.values.data[i] - Q[i]), q.scale(row: i / C, col: i % C), accuracy: 1e-12, at,
                           file: file, line: line)
        }
    }
    return flips
}

/// One case of the GPTQ oracle (`summary.json → gptq`): its grid and solver settings, H, and the summary entry.
struct GPTQOracleCase {
    let name: String
    let grid: QuantGrid
    let gptq: GPTQ
    let H: Matrix<Double>
    let info: [String: Any]
}

func gptqOracleCases(_ f: SafeTensorsFile) throws -> [GPTQOracleCase] {
    let cases = try XCTUnwrap(try oracleSummary()["gptq"] as? [String: [String: Any]])
    return try cases.sorted(by: { $0.key < $1.key }).map { name, info in
        let spec = try XCTUnwrap(info["spec"] as? [String: Any])
        let bits = try XCTUnwrap(spec["bits"] as? Int), groupSize = try XCTUnwrap(spec["groupsize"] as? Int)
        let sym = try XCTUnwrap(spec["sym"] as? Bool), mse = try XCTUnwrap(spec["mse"] as? Bool)
        let grid = try QuantGrid.weight(bits: bits, scheme: sym ? .symmetric : .asymmetric,
                                        groupSize: groupSize == -1 ? nil : groupSize, mse: mse ? .reference : nil)
        let gptq = GPTQ(blockSize: try XCTUnwrap(spec["blocksize"] as? Int), percDamp: try XCTUnwrap(spec["percdamp"] as? Double),
                        actOrder: try XCTUnwrap(spec["actorder"] as? Bool))
        let H = try f.matrix(f.tensors[name + ".H"] != nil ? name + ".H" : "H")
        return GPTQOracleCase(name: name, grid: grid, gptq: gptq, H: H, info: info)
    }
}
