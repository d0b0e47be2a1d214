import COpenBLAS

/// Float64 linear algebra over LAPACKE's row-major entry points (second moments, Hessians, PCA all run in
/// Double: DESIGN.md §3).

public struct LinearAlgebraError: Error, CustomStringConvertible {
    public let description: String
}

/// `C ← keep · C + alpha · XᵀX` for X of shape [n, d] (n samples as rows), the second-moment accumulation of GPTQ
/// and the PCA statistics. dsyrk fills one triangle; the other is mirrored so C stays a full symmetric matrix.
public func syrkAccumulate(_ x: Matrix<Double>, alpha: Double = 1, keep: Double = 1, into c: inout Matrix<Double>) {
    let n = x.rows, d = x.cols
    precondition(c.rows == d && c.cols == d, "syrk: X is \(n)×\(d) but C is \(c.rows)×\(c.cols)")
    x.data.withUnsafeBufferPointer { px in
        c.data.withUnsafeMutableBufferPointer { pc in
            cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, Int32(d), Int32(n), alpha, px.baseAddress!, Int32(d),
                        keep, pc.baseAddress!, Int32(d))
        }
    }
    for i in 0..<d { for j in 0..<i { c.data[i * d + j] = c.data[j * d + i] } }
}

/// `C ← keep · C + alpha · XᵀX` for a float32 X [n, d]: the product in float32 with ssyrk, added into the float64 C
/// (GPTQ_CDQUANT.md §6.1: per-batch fp32 products, fp64 accumulation). Twice dsyrk's throughput and no float64 copy
/// of X; one batch's sum of n ≤ a few thousand float32 products is far more precise than the reference's fp32 H.
/// `scratch` is a [d·d] float32 buffer reused across calls. Row t of X is at x + t·rowStride (default d), so X may
/// be a column slice of a wider matrix.
public func syrkAccumulate(_ x: UnsafePointer<Float>, rows n: Int, cols d: Int, rowStride: Int? = nil, alpha: Double,
                           keep: Double = 1, into c: inout Matrix<Double>, scratch: inout [Float]) {
    precondition(c.rows == d && c.cols == d, "syrk: X is \(n)×\(d) but C is \(c.rows)×\(c.cols)")
    let lda = rowStride ?? d
    precondition(lda >= d, "syrk: row stride \(lda) < \(d) columns")
    if scratch.count != d * d { scratch = [Float](repeating: 0, count: d * d) }
    scratch.withUnsafeMutableBufferPointer { ps in
        cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, Int32(d), Int32(n), 1, x, Int32(lda), 0, ps.baseAddress!, Int32(d))
        c.data.withUnsafeMutableBufferPointer { pc in
            for i in 0..<d {
                for j in i..<d {
                    let v = keep * pc[i * d + j] + alpha * Double(ps[i * d + j])
                    pc[i * d + j] = v
                    pc[j * d + i] = v
                }
            }
        }
    }
}

/// Cholesky factor of a symmetric positive-definite matrix: upper U with A = UᵀU (`upper: true`) or lower L with
/// A = LLᵀ. The unused triangle is zeroed.
public func cholesky(_ a: Matrix<Double>, upper: Bool = false) throws -> Matrix<Double> {
    precondition(a.rows == a.cols)
    var f = a
    let n = a.rows
    let info = f.data.withUnsafeMutableBufferPointer { p in
        LAPACKE_dpotrf(LAPACK_ROW_MAJOR, upper ? 85 /* U */ : 76 /* L */, Int32(n), p.baseAddress!, Int32(n))
    }
    guard info == 0 else {
        throw LinearAlgebraError(description: info > 0
            ? "Cholesky failed: leading minor \(info) of the \(n)×\(n) matrix is not positive definite"
            : "Cholesky: illegal argument \(-info)")
    }
    for i in 0..<n { for j in 0..<n where upper ? j < i : j > i { f.data[i * n + j] = 0 } }
    return f
}

/// Inverse of a symmetric positive-definite matrix through its Cholesky factor (dpotrf + dpotri).
public func choleskyInverse(_ a: Matrix<Double>) throws -> Matrix<Double> {
    var f = try cholesky(a, upper: false)
    let n = a.rows
    let info = f.data.withUnsafeMutableBufferPointer { p in
        LAPACKE_dpotri(LAPACK_ROW_MAJOR, 76, Int32(n), p.baseAddress!, Int32(n))
    }
    guard info == 0 else { throw LinearAlgebraError(description: "dpotri failed (info \(info))") }
    for i in 0..<n { for j in (i + 1)..<max(n, i + 1) { f.data[i * n + j] = f.data[j * n + i] } }
    return f
}

/// Inverse of a triangular matrix (dtrtri); the other triangle of the input is ignored and zero in the output.
public func triangularInverse(_ a: Matrix<Double>, upper: Bool) throws -> Matrix<Double> {
    precondition(a.rows == a.cols)
    let n = a.rows
    var f = a
    for i in 0..<n { for j in 0..<n where upper ? j < i : j > i { f.data[i * n + j] = 0 } }
    let info = f.data.withUnsafeMutableBufferPointer { p in
        LAPACKE_dtrtri(LAPACK_ROW_MAJOR, upper ? 85 : 76, 78 /* N: non-unit diagonal */, Int32(n), p.baseAddress!, Int32(n))
    }
    guard info == 0 else {
        throw LinearAlgebraError(description: info > 0 ? "triangular matrix is singular (zero at \(info))" : "dtrtri: illegal argument \(-info)")
    }
    return f
}

/// Symmetric eigendecomposition A = V Λ Vᵀ (dsyevd). Eigenvalues ascending; column j of `vectors` belongs to
/// `values[j]`, as numpy's `eigh` returns them.
public func symmetricEigen(_ a: Matrix<Double>) throws -> (values: [Double], vectors: Matrix<Double>) {
    precondition(a.rows == a.cols)
    let n = a.rows
    var v = a
    var w = [Double](repeating: 0, count: n)
    let info = v.data.withUnsafeMutableBufferPointer { p in
        w.withUnsafeMutableBufferPointer { pw in
            LAPACKE_dsyevd(LAPACK_ROW_MAJOR, 86 /* V */, 85 /* U */, Int32(n), p.baseAddress!, Int32(n), pw.baseAddress!)
        }
    }
    guard info == 0 else { throw LinearAlgebraError(description: "dsyevd failed to converge (info \(info))") }
    return (w, v)
}
