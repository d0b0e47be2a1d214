import CoQuantTensor

/// H = (2/n) Σ x xᵀ over the calibration inputs of one layer, accumulated in float64 (GPTQ_CDQUANT.md §1.3, §6.1):
/// float64 batches exactly, float32 batches (the forward pass's layer inputs) as one float32 ssyrk per batch added
/// into the float64 H, the spec's recommended split — it halves the cost of the largest share of a GPTQ pass.
///
/// Shapes: each batch X is [m, C] (one token per row), H is [C, C]. Like the reference's `add_batch`
/// (gptq.py:32-58) it keeps a running average, so H is usable after any batch:
///
///   H ← H · n/(n + m);  n ← n + m;  H ← H + (2/n) XᵀX
///
/// The reference counts m as the number of *sequences* in the call (inp.shape[0]), not tokens; pass `samples`
/// to follow it, or leave it out to count rows (GPTQModel's per-token normalisation). A positive scale of H
/// changes no GPTQ/CDQuant decision, only absolute loss values.
public struct HessianAccumulator: Sendable {
    public private(set) var H: Matrix<Double>
    public private(set) var samples = 0
    var scratch: [Float] = []

    public init(columns: Int) {
        H = Matrix(zeros: columns, columns)
    }

    /// Adds a float64 batch [rows, C] counting for `samples` samples (default: its rows).
    public mutating func add(_ x: Matrix<Double>, samples m: Int? = nil) {
        precondition(x.cols == H.cols, "Hessian has \(H.cols) columns, batch has \(x.cols)")
        let (alpha, keep) = advance(by: m ?? x.rows)
        syrkAccumulate(x, alpha: alpha, keep: keep, into: &H)
    }

    /// Adds a Float32 batch (e.g. a layer input seen by a forward hook), row r at x + r·C.
    public mutating func add(_ x: UnsafePointer<Float>, rows: Int, samples m: Int? = nil) {
        let (alpha, keep) = advance(by: m ?? rows)
        syrkAccumulate(x, rows: rows, cols: H.cols, alpha: alpha, keep: keep, into: &H, scratch: &scratch)
    }

    /// Counts a batch of m samples: the running average's weights of the new XᵀX and of the old H.
    private mutating func advance(by m: Int) -> (alpha: Double, keep: Double) {
        precondition(m > 0, "a batch must count for at least one sample")
        let n = samples
        samples = n + m
        return (2 / Double(n + m), Double(n) / Double(n + m))
    }
}
