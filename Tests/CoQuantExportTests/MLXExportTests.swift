@testable import CoQuantExport
@testable import CoQuantModel
import CoQuantTensor
import Foundation
import XCTest

/// `MLXExport`: mlx's uint32 packing, and an exported folder holding exactly the quantized folder's values.
/// (scripts/interop-test.sh loads such folders in mlx-lm itself and compares log-probabilities.)
final class MLXExportTests: ExportFolderTestCase {
    /// Word w of a row holds columns w·n … w·n + n − 1 (n = 32/bits), the first in the lowest bits, as mlx.quantize
    /// packs them; unpack inverts pack.
    func testPackMatchesMLXsLayoutAndRoundTrips() {
        var g = SeededGenerator(seed: 7)
        for bits in [2, 4, 8] {
            let rows = 3, cols = 96, n = 32 / bits
            let codes = (0..<(rows * cols)).map { _ in Int(g.next() % UInt64(1 << bits)) }
            let words = MLXExport.pack(rows: rows, cols: cols, bits: bits) { codes[$0 * cols + $1] }
            XCTAssertEqual(words.count, rows * cols * bits / 32)
            // Scalar reference: each word as the sum of its codes times powers of 2^bits.
            for r in 0..<rows {
                for w in 0..<(cols / n) {
                    var expected: UInt64 = 0
                    for k in 0..<n { expected += UInt64(codes[r * cols + w * n + k]) * (UInt64(1) << UInt64(k * bits)) }
                    XCTAssertEqual(UInt64(words[r * (cols / n) + w]), expected, "bits \(bits) row \(r) word \(w)")
                }
            }
            XCTAssertEqual(MLXExport.unpack(words, rows: rows, cols: cols, bits: bits), codes, "bits \(bits)")
        }
    }

    /// Every matrix of the export dequantizes (mlx's scales·q + biases) to the folder's values: the linears' to
    /// PackedPlanes.dequantized(), the int8 tables' to Int8Rows.dequantized(); the rest is copied.
    func testExportHoldsTheFoldersValues() throws {
        for (scheme, symmetric, bits, group) in [("W4A16g32", false, 4, 32), ("W4A16", true, 4, 64), ("W8A16g64", true, 8, 64),
                                                 ("W2A16g32", false, 2, 32)] {
            let folder = try quantizedFolder(scheme, symmetric: symmetric), out = folder + "-mlx"
            let report = try MLXExport.write(folder: folder, to: out)
            XCTAssertEqual(report.bits, bits, scheme)
            XCTAssertEqual(report.groupSize, group, scheme)
            let layers = try ModelConfiguration.load(folder + "/config.json").numHiddenLayers
            XCTAssertEqual(report.quantizedMatrices, layers * 7 + 2, scheme)

            let config = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: out + "/config.json"))) as? [String: Any])
            XCTAssertNil(config["quantization_config"])
            XCTAssertEqual(config["quantization"] as? [String: Int], ["group_size": group, "bits": bits])
            XCTAssertEqual(config["tie_word_embeddings"] as? Bool, false)
            XCTAssertNotNil(config["rope_theta"])
            XCTAssertNotNil((config["rope_parameters"] as? [String: Any])?["rope_theta"])

            let mlx = try TestTensorFile(out + "/model.safetensors")
            let ckpt = try SafeTensorsCheckpoint(folder: folder)
            let storage = try XCTUnwrap(try QuantizationConfig.load(folder + "/config.json")).weights.storageBits
            for l in 0..<layers {
                for (name, rows, cols) in [("self_attn.q_proj", 64, 64), ("self_attn.k_proj", 32, 64), ("mlp.down_proj", 64, 128)] {
                    let prefix = "model.layers.\(l).\(name)"
                    let p = try XCTUnwrap(try ckpt.packedPlanes(prefix, bits: storage, rows: rows, cols: cols))
                    assertSame(try mlx.dequantized(prefix, bits: bits), p.dequantized(), "\(scheme) \(prefix)")
                }
                XCTAssertEqual(try mlx.floats("model.layers.\(l).self_attn.q_proj.bias"), try ckpt.floats("model.layers.\(l).self_attn.q_proj.bias"))
            }
            for table in ["model.embed_tokens", "lm_head"] {
                let t = try XCTUnwrap(try ckpt.int8Rows(table, rows: 300, cols: 64))
                assertSame(try mlx.dequantized(table, bits: 8), t.dequantized(), "\(scheme) \(table)")
            }
            XCTAssertEqual(try mlx.floats("model.norm.weight"), try ckpt.floats("model.norm.weight"))
        }
    }

    /// Equal up to fp32 rounding: mlx computes s·q + (−s·z), the folder s·(q − z). One code off moves a value by s
    /// (≈ 1e-3 here), far above the 1e-6 allowed.
    func assertSame(_ a: [Float], _ b: [Float], _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(a.count, b.count, what, file: file, line: line)
        let worst = zip(a, b).map { abs($0 - $1) }.max() ?? .infinity
        XCTAssertLessThanOrEqual(worst, 1e-6, what, file: file, line: line)
    }

    func testRefusesWhatMLXCannotRun() throws {
        let w3 = try quantizedFolder("W3A16g32", symmetric: true)
        XCTAssertThrowsError(try MLXExport.write(folder: w3, to: w3 + "-mlx")) { e in
            XCTAssertTrue("\(e)".contains("3-bit"), "\(e)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: w3 + "-mlx"))
        // Act-order with groups scatters a group's columns; without groups the row is one group and exports.
        let grouped = try quantizedFolder("W4A16g32", symmetric: true, actOrder: true)
        XCTAssertThrowsError(try MLXExport.write(folder: grouped, to: grouped + "-mlx")) { e in
            XCTAssertTrue("\(e)".contains("act-order with groups"), "\(e)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: grouped + "-mlx"))
        let perChannel = try quantizedFolder("W4A16", symmetric: true, actOrder: true)
        XCTAssertEqual(try MLXExport.write(folder: perChannel, to: perChannel + "-mlx").groupSize, 64)
        let w4 = try quantizedFolder("W4A16g32", symmetric: true)
        try FileManager.default.createDirectory(atPath: w4 + "-mlx", withIntermediateDirectories: true)
        XCTAssertThrowsError(try MLXExport.write(folder: w4, to: w4 + "-mlx")) { e in
            XCTAssertTrue("\(e)".contains("--overwrite"), "\(e)")
        }
        XCTAssertNoThrow(try MLXExport.write(folder: w4, to: w4 + "-mlx", overwrite: true))
    }
}

/// Reading the export as mlx does.
private extension TestTensorFile {
    /// scales·q + biases of `<prefix>.weight/.scales/.biases`, [out, in].
    func dequantized(_ prefix: String, bits: Int) throws -> [Float] {
        let (words, shape) = try raw(prefix + ".weight", dtype: "U32", as: UInt32.self)
        let (scales, groupShape) = try raw(prefix + ".scales", dtype: "F32", as: Float.self)
        let biases = try floats(prefix + ".biases")
        let rows = shape[0], cols = shape[1] * 32 / bits, g = cols / groupShape[1]
        let q = MLXExport.unpack(words, rows: rows, cols: cols, bits: bits)
        return (0..<(rows * cols)).map { i in
            let k = i / cols * groupShape[1] + i % cols / g
            return scales[k] * Float(q[i]) + biases[k]
        }
    }
}
