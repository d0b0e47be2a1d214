import CoQuantTensor

// The interface RTN, GPTQ and CDQuant share (GPTQ_CDQUANT.md §1).
//
// Shapes: W [R, C] = [out_features, in_features] (nn.Linear.weight), H [C, C] the second moment of the layer
// input (GPTQ: 2/n Σ x xᵀ), groups of g input columns: scales/zeros [R, G], G = C/g (G = 1 per channel).
// Objective: L(Ŵ) = ‖X Wᵀ − X Ŵᵀ‖²_F = tr((W − Ŵ) H (W − Ŵ)ᵀ), separable over rows.

public protocol WeightSolver {
    /// Quantizes W row by row on `grid` (per row or per row group). H is nil only for solvers that ignore it.
    func solve(W: Matrix<Double>, H: Matrix<Double>?, grid: QuantGrid) throws -> QuantizedWeight
}

/// A quantized weight, in the original column order.
public struct QuantizedWeight: Sendable {
    /// Ŵ [R, C] = s·(code − z): what the layer computes with.
    public var values: Matrix<Double>
    /// [R, C] row-major, each in 0…maxq.
    public var codes: [Int32]
    /// [R, G]: the grid of (row r, column c) is scales[r, groupIndex[c]], zeros[r, groupIndex[c]].
    public var scales: Matrix<Double>
    public var zeros: Matrix<Double>
    /// g_idx [C] (AutoGPTQ): c / g, except act-order with GPTQ's dynamic groups, where groups are consecutive in
    /// the permuted order and g_idx[c] = (position of c in `permutation`) / g.
    public var groupIndex: [Int]
    /// Act-order: permutation[k] is the original column processed k-th (descending diag H). nil otherwise.
    public var permutation: [Int]?
    /// Mixed precision (`ColumnGrids`): maxq of each group; nil when every group has the grid's maxq.
    public var groupMaxq: [Int]? = nil

    // Hessian-based solvers only.
    /// The percdamp that factorised (the requested one unless it had to be escalated).
    public var dampingUsed: Double?
    /// λ = dampingUsed · mean(diag H), added to the diagonal.
    public var damp: Double?
    /// How many ×10 escalations of percdamp the Cholesky chain needed.
    public var dampingEscalations: Int = 0
    /// GPTQ's printed `error` = Σ Losses = ½ Σ (w̃ − q)²/U_ii² = ½ tr((W₀ − Ŵ) H_λ (W₀ − Ŵ)ᵀ), W₀ = W with dead
    /// columns zeroed (GPTQ_CDQUANT.md §2.4).
    public var errorSum: Double?

    // Coordinate-descent solvers (CDQuant) only. Losses are full traces tr((W₀ − Ŵ) H_λ (W₀ − Ŵ)ᵀ) on the damped,
    // dead-fixed H_λ the solver minimised (not GPTQ's halved `errorSum`).
    /// The loss of the initialisation the descent started from (GPTQ's or RTN's Ŵ).
    public var initialLoss: Double? = nil
    /// That initialisation's Ŵ [R, C], so a caller can score it on another objective (the report's undamped H).
    public var initialValues: Matrix<Double>? = nil
    /// The loss of the returned Ŵ.
    public var finalLoss: Double? = nil
    /// Coordinates changed by the descent, all rows together.
    public var moves: Int? = nil
    /// Rows whose descent ended because no move lowered the loss (a 1-opt point), not because of the budget.
    public var rowsAtLocalOptimum: Int? = nil

    public func scale(row r: Int, col c: Int) -> Double { scales[r, groupIndex[c]] }
    public func zero(row r: Int, col c: Int) -> Double { zeros[r, groupIndex[c]] }
}

/// Per-row losses (w_r − ŵ_r) H (w_r − ŵ_r)ᵀ, through one GEMM.
public func rowLosses(_ W: Matrix<Double>, _ Wq: Matrix<Double>, _ H: Matrix<Double>) -> [Double] {
    precondition(W.rows == Wq.rows && W.cols == Wq.cols && H.rows == W.cols && H.cols == W.cols,
                 "layer loss: W \(W.rows)×\(W.cols), Ŵ \(Wq.rows)×\(Wq.cols), H \(H.rows)×\(H.cols)")
    var d = W
    for i in d.data.indices { d.data[i] -= Wq.data[i] }
    let dh = matmul(d, H)
    return (0..<W.rows).map { r in
        var s = 0.0
        for j in (r * W.cols)..<((r + 1) * W.cols) { s += d.data[j] * dh.data[j] }
        return s
    }
}

/// L = tr((W − Ŵ) H (W − Ŵ)ᵀ).
public func layerLoss(_ W: Matrix<Double>, _ Wq: Matrix<Double>, _ H: Matrix<Double>) -> Double {
    rowLosses(W, Wq, H).reduce(0, +)
}

extension QuantGrid {
    /// Columns per group for a weight solver: nil per row; per-tensor grids have no [R, G] table and are refused.
    func weightGroupSize(columns: Int) throws -> Int? {
        switch granularity {
        case .perTensor:
            throw QuantError.unsupportedGranularity(
                "weight solvers quantize per output row or per row group; use quantize(_:grid:) for a per-tensor grid")
        case .perRow: return nil
        case .perRowGroup(let g):
            guard columns % g == 0 else { throw QuantError.groupSizeDoesNotDivide(groupSize: g, dimension: columns) }
            guard columns % span(groupSize: g) == 0 else {
                throw QuantError.groupSizeDoesNotDivide(groupSize: span(groupSize: g), dimension: columns)
            }
            return g
        }
    }
}

/// Mixed precision across input columns (ResQ/CoQuant, COQUANT_RESQ.md §3.1): column c belongs to group
/// `group[c]`, quantized per row on `grids[group[c]]` with a (scale, zero) per (row, group) fixed once from the
/// original W (the reference's `find_params` before GPTQ). The groups need not be contiguous (o_proj's 8-bit
/// columns are the last r_h of every head).
public struct ColumnGrids: Sendable {
    public let group: [Int]
    public let grids: [QuantGrid]

    public init(group: [Int], grids: [QuantGrid]) throws {
        guard !grids.isEmpty, group.allSatisfy({ grids.indices.contains($0) }) else {
            throw QuantError.invalidParameter("column grids: every column needs a grid among \(grids.count)")
        }
        for g in grids where g.granularity != .perRow {
            throw QuantError.unsupportedGranularity("column grids are per output row; groups of columns are not supported with mixed precision")
        }
        self.group = group
        self.grids = grids
    }

    /// Low grid for every column, `high` for the listed columns.
    public init(columns: Int, high: [Int], low: QuantGrid, highGrid: QuantGrid) throws {
        var group = [Int](repeating: 0, count: columns)
        for c in high { group[c] = 1 }
        try self.init(group: group, grids: [low, highGrid])
    }

    /// The columns in processing order: low ones first, high ones last (so the 8-bit columns absorb the error
    /// feedback of the 4-bit ones, as the reference's column layout makes GPTQ do).
    public var lowFirstOrder: [Int] {
        group.indices.sorted { (group[$0], $0) < (group[$1], $1) }
    }

    /// (scale, zero) of every (row, group) from W [R, C]: [R, G] each.
    func parameters(_ W: Matrix<Double>) -> (scales: Matrix<Double>, zeros: Matrix<Double>) {
        let R = W.rows, C = W.cols, G = grids.count
        var scales = Matrix<Double>(zeros: R, G), zeros = Matrix<Double>(zeros: R, G)
        let members = (0..<G).map { k in (0..<C).filter { group[$0] == k } }
        // With the MSE clip search this is a large share of a ResQ/CoQuant solve.
        let workers = parameterSearchWorkers(rows: R, cols: C, mse: grids.contains { $0.mse != nil })
        scales.data.withUnsafeMutableBufferPointer { ps in
            zeros.data.withUnsafeMutableBufferPointer { pz in
                parallelFor(workers) { w in
                    for r in (R * w / workers)..<(R * (w + 1) / workers) {
                        for k in 0..<G where !members[k].isEmpty {
                            let slice = members[k].map { W[r, $0] }
                            (ps[r * G + k], pz[r * G + k]) = slice.withUnsafeBufferPointer { grids[k].parameters(of: $0) }
                        }
                    }
                }
            }
        }
        return (scales, zeros)
    }
}
