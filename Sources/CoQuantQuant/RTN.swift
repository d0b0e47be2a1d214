import CoQuantTensor

/// Round-to-nearest: every weight to its nearest grid point, grid from the original W, no H
/// (GPTQ_CDQUANT.md §2.7; the reference's `--nearest`, opt.py:182-192). Shapes: W [R, C] → Ŵ, codes [R, C].
public struct RTN: WeightSolver {
    /// Mixed precision: when set, `grid` is ignored and each column is rounded on its group's grid.
    public var columnGrids: ColumnGrids?

    public init(columnGrids: ColumnGrids? = nil) { self.columnGrids = columnGrids }

    public func solve(W: Matrix<Double>, H: Matrix<Double>? = nil, grid: QuantGrid) throws -> QuantizedWeight {
        if let cg = columnGrids {
            guard cg.group.count == W.cols else { throw QuantError.shapeMismatch("column grids for \(cg.group.count) columns, W has \(W.cols)") }
            let (scales, zeros) = cg.parameters(W)
            var values = W, codes = [Int32](repeating: 0, count: W.rows * W.cols)
            for r in 0..<W.rows {
                for c in 0..<W.cols {
                    let k = cg.group[c], s = scales[r, k], z = zeros[r, k]
                    let code = gridCode(W[r, c], scale: s, zero: z, maxq: Double(cg.grids[k].maxq))
                    codes[r * W.cols + c] = Int32(code)
                    values[r, c] = s * (code - z)
                }
            }
            var q = QuantizedWeight(values: values, codes: codes, scales: scales, zeros: zeros, groupIndex: cg.group, permutation: nil)
            q.groupMaxq = cg.grids.map(\.maxq)
            return q
        }
        let g = try grid.weightGroupSize(columns: W.cols) ?? W.cols
        let q = try quantize(W, grid: grid)
        return QuantizedWeight(values: q.values, codes: q.codes, scales: q.scales, zeros: q.zeros,
                               groupIndex: (0..<W.cols).map { $0 / g }, permutation: nil)
    }
}
