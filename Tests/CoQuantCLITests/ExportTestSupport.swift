import Foundation
import XCTest

// What the export tests of the command line share. This target links no CoQuant module, so files are read here with
// a few lines each.

extension CLITests {
    /// `coquant quantize MODEL --method quarot --scheme W4A4KV4` into path("w4a4"): a folder with quantized
    /// activations and KV cache, which the weight-only exports refuse.
    func quantizedW4A4(_ model: String, calibration: String) throws -> String {
        let w4a4 = path("w4a4")
        assertSucceeded(try coquant(["quantize", model, "--method", "quarot", "--scheme", "W4A4KV4", "--nsamples", "2", "--seqlen", "16",
                                     "--calib-file", calibration, "--out", w4a4]))
        return w4a4
    }
}

/// A safetensors file read whole: enough for the few tensors a test looks at.
struct TensorFile {
    let data: Data
    let header: [String: [String: Any]]
    let start: Int

    init(_ path: String) throws {
        data = try XCTUnwrap(FileManager.default.contents(atPath: path), "\(path) is missing")
        let n = Int(data.prefix(8).withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) })
        header = try XCTUnwrap(JSONSerialization.jsonObject(with: data.subdata(in: 8..<(8 + n))) as? [String: Any])
            .compactMapValues { $0 as? [String: Any] }
        start = 8 + n
    }

    func raw<T>(_ name: String, dtype: String, as: T.Type) throws -> (values: [T], shape: [Int]) {
        let e = try XCTUnwrap(header[name], "no tensor \(name)")
        XCTAssertEqual(e["dtype"] as? String, dtype, name)
        let o = try XCTUnwrap(e["data_offsets"] as? [Int]), shape = try XCTUnwrap(e["shape"] as? [Int])
        return (data.subdata(in: (start + o[0])..<(start + o[1])).withUnsafeBytes { Array($0.bindMemory(to: T.self)) }, shape)
    }

    /// s·(q − z) of a folder's 4-bit `<prefix>` in its v2 layout (PlaneLayout.swift: each row in runs of 32 columns,
    /// padded to 32, one 16-byte plane a run, byte j = code(j) | code(j + 16) << 4), with a scale and zero per group of
    /// `groupSize` columns, or per row when nil.
    func folderValues4Bit(_ prefix: String, rows: Int, cols: Int, groupSize: Int?) throws -> [Float] {
        let (bytes, shape) = try raw(prefix + ".qweight", dtype: "U8", as: UInt8.self)
        let padded = (cols + 31) / 32 * 32, g = groupSize ?? cols, groups = cols / g
        XCTAssertEqual(shape, [rows, padded / 2], prefix)
        let scales = try raw(prefix + ".scales", dtype: "F32", as: Float.self).values
        let zeros = try raw(prefix + ".zeros", dtype: "F32", as: Float.self).values
        return (0..<(rows * cols)).map { i in
            let r = i / cols, c = i % cols, k = r * groups + c / g
            let b = bytes[r * padded / 2 + c / 32 * 16 + c % 16]
            let q = c % 32 < 16 ? b & 15 : b >> 4
            return scales[k] * (Float(q) - zeros[k])
        }
    }
}
