import CoQuantTensor

/// Round-to-nearest: every weight to its nearest grid point, grid from the original W, no H
/// (GPTQ_CDQUANT.md §2.7; the reference's `--nearest`, opt.py:182-192). Shapes: W [R, C] → Ŵ, codes [R, C].
public struct RTN: WeightSolver {
    public init() {}

    public func solve(W: Matrix<Double>, H: Matrix<Double>? = nil, grid: QuantGrid) throws -> QuantizedWeight {
        let g = try grid.weightGroupSize(columns: W.cols) ?? W.cols
        let q = try quantize(W, grid: grid)
        return QuantizedWeight(values: q.values, codes: q.codes, scales: q.scales, zeros: q.zeros,
                               groupIndex: (0..<W.cols).map { $0 / g }, permutation: nil)
    }
}
