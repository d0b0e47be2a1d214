@testable import CoQuantExport
@testable import CoQuantModel
import CoQuantTensor
import Foundation
import XCTest

/// `CompressedTensorsExport` and `HFExport`: compressed-tensors' int32 bitstream packing, and exported folders holding
/// exactly the quantized folder's values. (scripts/interop-test.sh loads such folders in transformers itself.)
final class CompressedTensorsExportTests: ExportFolderTestCase {
    /// pack_to_int32: value c of a row occupies bits c·b … c·b + b − 1 of the row's bitstream (word = bit / 32, LSB
    /// first, a value crossing a word boundary continues in the next word's low bits); ⌈cols·b/32⌉ words a row.
    /// Checked against a bit-by-bit scalar reference for every width 1…8 (3, 5, 6, 7 straddle words), and unpack
    /// inverts pack.
    func testPackIsCompressedTensorsBitstreamAndRoundTrips() {
        var g = SeededGenerator(seed: 11)
        for bits in 1...8 {
            for cols in [64, 70, 96] {
                let rows = 3
                let values = (0..<(rows * cols)).map { _ in Int(g.next() % UInt64(1 << bits)) }
                let (words, perRow) = CompressedTensorsExport.pack(rows: rows, cols: cols, bits: bits) { values[$0 * cols + $1] }
                XCTAssertEqual(perRow, (cols * bits + 31) / 32)
                XCTAssertEqual(words.count, rows * perRow)
                for r in 0..<rows {
                    var expected = [UInt32](repeating: 0, count: perRow)
                    for c in 0..<cols {
                        for k in 0..<bits where values[r * cols + c] >> k & 1 == 1 {
                            let bit = c * bits + k
                            expected[bit / 32] |= UInt32(1) << UInt32(bit % 32)
                        }
                    }
                    XCTAssertEqual(words[(r * perRow)..<((r + 1) * perRow)].map { UInt32(bitPattern: $0) }, expected, "bits \(bits) cols \(cols) row \(r)")
                }
                XCTAssertEqual(CompressedTensorsExport.unpack(words, rows: rows, cols: cols, bits: bits), values, "bits \(bits) cols \(cols)")
            }
        }
        // compressed-tensors' own example: int4 values [-8, -7, …, 7] (stored + 8 = 0…15) pack to 0x76543210, 0xFEDCBA98.
        let (w, _) = CompressedTensorsExport.pack(rows: 1, cols: 16, bits: 4) { _, c in c }
        XCTAssertEqual(w.map { UInt32(bitPattern: $0) }, [0x7654_3210, 0xFEDC_BA98])
    }

    /// Every linear of the export, dequantized by a Swift mirror of the loader (unpack_from_int32, then
    /// (q_signed − zp_signed)·scale in the scale's dtype), equals PackedPlanes.dequantized() bit for bit; the int8
    /// tables are written as their dequantized values; config states the scheme.
    func testExportHoldsTheFoldersValues() throws {
        for (scheme, symmetric, bits, group) in [("W4A16g32", false, 4, 32), ("W4A16", true, 4, nil), ("W8A16g64", true, 8, 64),
                                                 ("W8A16", false, 8, nil)] as [(String, Bool, Int, Int?)] {
            let folder = try quantizedFolder(scheme, symmetric: symmetric), out = folder + "-ct"
            let report = try CompressedTensorsExport.write(folder: folder, to: out)
            XCTAssertEqual(report.bits, bits, scheme)
            XCTAssertEqual(report.groupSize, group, scheme)
            XCTAssertEqual(report.symmetric, symmetric, scheme)
            let layers = try ModelConfiguration.load(folder + "/config.json").numHiddenLayers
            XCTAssertEqual(report.quantizedLinears, layers * 7, scheme)

            let config = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: out + "/config.json"))) as? [String: Any])
            let qc = try XCTUnwrap(config["quantization_config"] as? [String: Any])
            XCTAssertEqual(qc["quant_method"] as? String, "compressed-tensors")
            XCTAssertEqual(qc["format"] as? String, "pack-quantized")
            XCTAssertEqual(qc["quantization_status"] as? String, "compressed")
            XCTAssertEqual(qc["ignore"] as? [String], ["lm_head"])
            let weights = try XCTUnwrap((((qc["config_groups"] as? [String: Any])?["group_0"]) as? [String: Any])?["weights"] as? [String: Any])
            XCTAssertEqual(weights["num_bits"] as? Int, bits)
            XCTAssertEqual(weights["symmetric"] as? Bool, symmetric)
            XCTAssertEqual(weights["strategy"] as? String, group == nil ? "channel" : "group")
            XCTAssertEqual(weights["group_size"] as? Int, group)
            XCTAssertTrue(weights["actorder"] is NSNull)
            XCTAssertEqual(config["tie_word_embeddings"] as? Bool, false)
            XCTAssertNotNil(config["rope_theta"])
            XCTAssertNotNil((config["rope_parameters"] as? [String: Any])?["rope_theta"])

            let file = try TestTensorFile(out + "/model.safetensors")
            let ckpt = try SafeTensorsCheckpoint(folder: folder)
            let storage = try XCTUnwrap(try QuantizationConfig.load(folder + "/config.json")).weights.storageBits
            for l in 0..<layers {
                for (name, rows, cols) in [("self_attn.q_proj", 64, 64), ("self_attn.k_proj", 32, 64), ("mlp.down_proj", 64, 128)] {
                    let prefix = "model.layers.\(l).\(name)"
                    let p = try XCTUnwrap(try ckpt.packedPlanes(prefix, bits: storage, rows: rows, cols: cols))
                    XCTAssertEqual(try file.loaderValues(prefix, bits: bits, symmetric: symmetric), p.dequantized(), "\(scheme) \(prefix)")
                    XCTAssertNil(file.header[prefix + ".weight"])
                }
                XCTAssertEqual(try file.floats("model.layers.\(l).self_attn.q_proj.bias"), try ckpt.floats("model.layers.\(l).self_attn.q_proj.bias"))
            }
            for table in ["model.embed_tokens", "lm_head"] {
                let t = try XCTUnwrap(try ckpt.int8Rows(table, rows: 300, cols: 64))
                XCTAssertEqual(try file.floats(table + ".weight"), t.dequantized(), "\(scheme) \(table)")
            }
            XCTAssertEqual(try file.floats("model.norm.weight"), try ckpt.floats("model.norm.weight"))
        }
    }

    /// The hf export: every matrix the folder's dequantized values (F32 exactly, F16 rounded), config for transformers.
    func testHFExportHoldsTheFoldersValues() throws {
        let folder = try quantizedFolder("W4A16g32", symmetric: false)
        let f32 = try HFExport.write(folder: folder, to: folder + "-hf32", type: .f32)
        let layers = try ModelConfiguration.load(folder + "/config.json").numHiddenLayers
        XCTAssertEqual(f32.dequantizedMatrices, layers * 7 + 2)
        XCTAssertTrue(f32.tensors.allSatisfy { $0.dtype == "F32" })
        let f16 = try HFExport.write(folder: folder, to: folder + "-hf16")
        XCTAssertTrue(f16.tensors.allSatisfy { $0.dtype == "F16" })
        let ckpt = try SafeTensorsCheckpoint(folder: folder)
        let a = try TestTensorFile(folder + "-hf32/model.safetensors"), b = try TestTensorFile(folder + "-hf16/model.safetensors")
        let p = try XCTUnwrap(try ckpt.packedPlanes("model.layers.1.mlp.up_proj", bits: 4, rows: 128, cols: 64))
        XCTAssertEqual(try a.floats("model.layers.1.mlp.up_proj.weight"), p.dequantized())
        XCTAssertEqual(try b.halfs("model.layers.1.mlp.up_proj.weight"), p.dequantized().map { Float(Float16($0)) })
        XCTAssertEqual(try a.floats("lm_head.weight"), try XCTUnwrap(try ckpt.int8Rows("lm_head", rows: 300, cols: 64)).dequantized())
        for (out, dtype) in [(folder + "-hf32", "float32"), (folder + "-hf16", "float16")] {
            let config = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: out + "/config.json"))) as? [String: Any])
            XCTAssertNil(config["quantization_config"])
            XCTAssertEqual(config["torch_dtype"] as? String, dtype)
            XCTAssertNotNil(config["rope_theta"])
            XCTAssertNotNil((config["rope_parameters"] as? [String: Any])?["rope_theta"])
        }
    }

    func testRefusesWhatItCannotCarry() throws {
        let w3 = try quantizedFolder("W3A16g32", symmetric: true)
        XCTAssertThrowsError(try CompressedTensorsExport.write(folder: w3, to: w3 + "-ct")) { e in
            XCTAssertTrue("\(e)".contains("3-bit") && "\(e)".contains(w3), "\(e)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: w3 + "-ct"))
        XCTAssertNoThrow(try HFExport.write(folder: w3, to: w3 + "-hf"), "a dense folder carries any width")
        // Act-order with groups scatters a group's columns; without groups the row is one group and exports.
        let grouped = try quantizedFolder("W4A16g32", symmetric: true, actOrder: true)
        XCTAssertThrowsError(try CompressedTensorsExport.write(folder: grouped, to: grouped + "-ct")) { e in
            XCTAssertTrue("\(e)".contains("act-order with groups"), "\(e)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: grouped + "-ct"))
        let perChannel = try quantizedFolder("W4A16", symmetric: true, actOrder: true)
        XCTAssertNil(try CompressedTensorsExport.write(folder: perChannel, to: perChannel + "-ct").groupSize)
        // Existing output only with overwrite.
        let w4 = try quantizedFolder("W4A16g32", symmetric: true)
        try FileManager.default.createDirectory(atPath: w4 + "-ct", withIntermediateDirectories: true)
        XCTAssertThrowsError(try CompressedTensorsExport.write(folder: w4, to: w4 + "-ct")) { e in
            XCTAssertTrue("\(e)".contains("--overwrite"), "\(e)")
        }
        XCTAssertNoThrow(try CompressedTensorsExport.write(folder: w4, to: w4 + "-ct", overwrite: true))
        // An unquantized model has nothing to pack.
        XCTAssertThrowsError(try CompressedTensorsExport.write(folder: fixtures + "/c_qwen2_bias_untied", to: dir + "/dense-ct")) { e in
            XCTAssertTrue("\(e)".contains("not quantized") && "\(e)".contains("--format hf"), "\(e)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/dense-ct"))
    }
}

/// Reading the export: F16 tensors, and the loader's formula.
private extension TestTensorFile {
    func halfs(_ name: String) throws -> [Float] { try raw(name, dtype: "F16", as: UInt16.self).values.map { Float(Float16(bitPattern: $0)) } }

    /// PackedQuantizationCompressor.decompress: q = unpack(weight_packed) − 2^(b−1) along the input, zp =
    /// unpack(weight_zero_point along the output) − 2^(b−1) (0 when symmetric), weight = (q − zp)·scale in fp32.
    func loaderValues(_ prefix: String, bits: Int, symmetric: Bool) throws -> [Float] {
        let shape = try raw(prefix + ".weight_shape", dtype: "I32", as: Int32.self).values.map(Int.init)
        let rows = shape[0], cols = shape[1], offset = 1 << (bits - 1)
        let (packed, packedShape) = try raw(prefix + ".weight_packed", dtype: "I32", as: Int32.self)
        XCTAssertEqual(packedShape, [rows, (cols * bits + 31) / 32], prefix)
        let (scales, scaleShape) = try raw(prefix + ".weight_scale", dtype: "F32", as: Float.self)
        let groups = scaleShape[1], g = cols / groups
        let q = CompressedTensorsExport.unpack(packed, rows: rows, cols: cols, bits: bits).map { $0 - offset }
        var zp = [Int](repeating: 0, count: rows * groups)
        if symmetric {
            XCTAssertNil(header[prefix + ".weight_zero_point"], prefix)
        } else {
            let (words, zpShape) = try raw(prefix + ".weight_zero_point", dtype: "I32", as: Int32.self)
            XCTAssertEqual(zpShape, [(rows * bits + 31) / 32, groups], prefix)
            // packed_dim = 0: transpose to [groups, packedRows], unpack each group's column of zero points.
            let t = (0..<(groups * zpShape[0])).map { i in words[i % zpShape[0] * groups + i / zpShape[0]] }
            let unpacked = CompressedTensorsExport.unpack(t, rows: groups, cols: rows, bits: bits)
            for r in 0..<rows { for k in 0..<groups { zp[r * groups + k] = unpacked[k * rows + r] - offset } }
        }
        return (0..<(rows * cols)).map { i in
            let k = i / cols * groups + i % cols / g
            return (Float(q[i]) - Float(zp[k])) * scales[k]
        }
    }
}
