import COpenBLAS
import Foundation

/// Element types BLAS/LAPACK have kernels for: `Float` (the forward pass) and `Double` (statistics, Hessians, PCA).
public protocol BLASScalar: BinaryFloatingPoint, Sendable {
    static func gemm(_ transA: Bool, _ transB: Bool, _ m: Int, _ n: Int, _ k: Int, _ alpha: Self,
                     _ a: UnsafePointer<Self>, _ lda: Int, _ b: UnsafePointer<Self>, _ ldb: Int,
                     _ beta: Self, _ c: UnsafeMutablePointer<Self>, _ ldc: Int)
}

/// Thread-seconds spent inside sgemm, for the benchmarks' "share of time in GEMM". Off by default; when off it
/// costs one branch per GEMM call.
public enum GEMMClock {
    nonisolated(unsafe) public static var enabled = false
    nonisolated(unsafe) static var total = 0.0
    static let lock = NSLock()
    public static var seconds: Double {
        get { lock.lock(); defer { lock.unlock() }; return total }
        set { lock.lock(); total = newValue; lock.unlock() }
    }
    static func add(_ s: Double) { lock.lock(); total += s; lock.unlock() }
}

extension Float: BLASScalar {
    public static func gemm(_ transA: Bool, _ transB: Bool, _ m: Int, _ n: Int, _ k: Int, _ alpha: Float,
                            _ a: UnsafePointer<Float>, _ lda: Int, _ b: UnsafePointer<Float>, _ ldb: Int,
                            _ beta: Float, _ c: UnsafeMutablePointer<Float>, _ ldc: Int) {
        let start = GEMMClock.enabled ? DispatchTime.now().uptimeNanoseconds : 0
        defer { if GEMMClock.enabled { GEMMClock.add(Double(DispatchTime.now().uptimeNanoseconds - start) * 1e-9) } }
        cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
                    Int32(m), Int32(n), Int32(k), alpha, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
    }
}

extension Double: BLASScalar {
    public static func gemm(_ transA: Bool, _ transB: Bool, _ m: Int, _ n: Int, _ k: Int, _ alpha: Double,
                            _ a: UnsafePointer<Double>, _ lda: Int, _ b: UnsafePointer<Double>, _ ldb: Int,
                            _ beta: Double, _ c: UnsafeMutablePointer<Double>, _ ldc: Int) {
        cblas_dgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
                    Int32(m), Int32(n), Int32(k), alpha, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
    }
}

/// A dense row-major matrix: element (i, j) is `data[i * cols + j]`.
/// The element accessors are @inlinable so other modules get them specialised (an unspecialised generic subscript
/// in a hot loop costs tens of nanoseconds per element).
public struct Matrix<T: BLASScalar>: Equatable, Sendable {
    public let rows: Int
    public let cols: Int
    public var data: [T]

    @inlinable
    public init(rows: Int, cols: Int, data: [T]) {
        precondition(data.count == rows * cols, "Matrix data has \(data.count) elements, expected \(rows)×\(cols)")
        self.rows = rows
        self.cols = cols
        self.data = data
    }

    @inlinable
    public init(zeros rows: Int, _ cols: Int) {
        self.init(rows: rows, cols: cols, data: [T](repeating: 0, count: rows * cols))
    }

    @inlinable
    public static func identity(_ n: Int) -> Matrix {
        var m = Matrix(zeros: n, n)
        for i in 0..<n { m.data[i * n + i] = 1 }
        return m
    }

    @inlinable
    public subscript(i: Int, j: Int) -> T {
        get { data[i * cols + j] }
        set { data[i * cols + j] = newValue }
    }

    @inlinable
    public var transposed: Matrix {
        var t = Matrix(zeros: cols, rows)
        for i in 0..<rows { for j in 0..<cols { t.data[j * rows + i] = data[i * cols + j] } }
        return t
    }

    @inlinable
    public func row(_ i: Int) -> ArraySlice<T> { data[(i * cols)..<((i + 1) * cols)] }
}

/// `C = alpha · op(A) · op(B) + beta · C`, with op = transpose when asked.
public func gemm<T>(_ a: Matrix<T>, transA: Bool = false, _ b: Matrix<T>, transB: Bool = false,
                    alpha: T = 1, beta: T = 0, into c: inout Matrix<T>) {
    let m = transA ? a.cols : a.rows, k = transA ? a.rows : a.cols
    let kb = transB ? b.cols : b.rows, n = transB ? b.rows : b.cols
    precondition(k == kb && c.rows == m && c.cols == n, "gemm shapes: \(m)×\(k) · \(kb)×\(n) → \(c.rows)×\(c.cols)")
    a.data.withUnsafeBufferPointer { pa in
        b.data.withUnsafeBufferPointer { pb in
            c.data.withUnsafeMutableBufferPointer { pc in
                T.gemm(transA, transB, m, n, k, alpha, pa.baseAddress!, a.cols, pb.baseAddress!, b.cols,
                       beta, pc.baseAddress!, n)
            }
        }
    }
}

/// `op(A) · op(B)` as a new matrix.
public func matmul<T>(_ a: Matrix<T>, transA: Bool = false, _ b: Matrix<T>, transB: Bool = false) -> Matrix<T> {
    var c = Matrix<T>(zeros: transA ? a.cols : a.rows, transB ? b.rows : b.cols)
    gemm(a, transA: transA, b, transB: transB, into: &c)
    return c
}

public func * <T>(a: Matrix<T>, b: Matrix<T>) -> Matrix<T> { matmul(a, b) }

extension Matrix {
    /// Largest |a − b| over all elements; NaN if any difference is NaN (Swift.max would drop it, and a test
    /// asserting `< tol` would pass on all-NaN output).
    public func maxAbsDifference(_ other: Matrix) -> T {
        precondition(rows == other.rows && cols == other.cols)
        var m: T = 0
        for i in data.indices {
            let d = abs(data[i] - other.data[i])
            if d.isNaN { return .nan }
            m = Swift.max(m, d)
        }
        return m
    }
}
