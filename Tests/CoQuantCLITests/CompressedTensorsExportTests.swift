import Foundation
import XCTest

/// `coquant export --format compressed-tensors | hf`: the folders hold the quantized folder's values in the layouts
/// transformers reads, and what they cannot carry is refused with nothing written. (scripts/interop-test.sh loads
/// the same folders in transformers itself.)
///
/// This target links no CoQuant module, so both files are read here with a few lines each: the compressed-tensors
/// side as its loader reads it (int32 words, an LSB-first bitstream of codes along each row; value = (q − 8)·scale for
/// a symmetric 4-bit grid), the folder side in its v2 layout for the one case used, 4-bit per-channel codes
/// (PlaneLayout.swift: one run per row padded to 32 columns, plane bytes j = code(j) | code(j + 16) << 4).
extension CLITests {
    func testCompressedTensorsAndHFExportHoldTheFoldersValues() throws {
        let model = try tinyModelWithTokenizer(), calibration = try smallTextFile("calib.txt")
        let folder = path("w4"), out = path("out/w4-ct"), hf = path("out/w4-hf")
        assertSucceeded(try coquant(["quantize", model, "--method", "rtn", "--scheme", "W4A16", "--nsamples", "2",
                                     "--seqlen", "16", "--calib-file", calibration, "--out", folder]))
        let e = try coquant(["export", folder, "--format", "compressed-tensors", "--out", out])
        assertSucceeded(e)
        XCTAssertTrue(e.stdout.contains("28 linears pack-quantized (4-bit symmetric, per channel"), e.transcript)

        let config = try jsonObject(out + "/config.json")
        let qc = try XCTUnwrap(config["quantization_config"] as? [String: Any])
        XCTAssertEqual(qc["quant_method"] as? String, "compressed-tensors")
        XCTAssertEqual(qc["format"] as? String, "pack-quantized")
        XCTAssertEqual(config["tie_word_embeddings"] as? Bool, true)
        XCTAssertTrue(FileManager.default.fileExists(atPath: out + "/tokenizer.json"))

        let ct = try TensorFile(out + "/model.safetensors"), source = try TensorFile(folder + "/model.safetensors")
        XCTAssertNil(ct.header["lm_head.weight"], "tied: no head")
        for l in 0..<4 {
            for (name, rows, cols) in [("self_attn.q_proj", 64, 64), ("self_attn.v_proj", 16, 64), ("mlp.down_proj", 64, 160)] {
                let prefix = "model.layers.\(l).\(name)"
                let theirs = try ct.symmetric4BitValues(prefix)
                XCTAssertEqual(theirs.count, rows * cols, prefix)
                XCTAssertEqual(theirs, try source.folderValues4Bit(prefix, rows: rows, cols: cols, groupSize: nil), prefix)
                XCTAssertNil(ct.header[prefix + ".weight_zero_point"], "symmetric: no zero points")
            }
        }
        // The int8-row embedding table, dense: s·code.
        let codes = try source.raw("model.embed_tokens.codes", dtype: "I8", as: Int8.self).values
        let rowScales = try source.raw("model.embed_tokens.row_scales", dtype: "F32", as: Float.self).values
        let table = try ct.raw("model.embed_tokens.weight", dtype: "F32", as: Float.self).values
        XCTAssertEqual(table, codes.indices.map { rowScales[$0 / 64] * Float(codes[$0]) })

        // hf: F16 by default, --type f32 exact.
        let h = try coquant(["export", folder, "--format", "hf", "--type", "f32", "--out", hf])
        assertSucceeded(h)
        XCTAssertTrue(h.stdout.contains("all F32 (29 matrices dequantized)"), h.transcript)
        let dense = try TensorFile(hf + "/model.safetensors")
        XCTAssertEqual(try dense.raw("model.layers.2.mlp.down_proj.weight", dtype: "F32", as: Float.self).values,
                       try source.folderValues4Bit("model.layers.2.mlp.down_proj", rows: 64, cols: 160, groupSize: nil))
        XCTAssertNil(try jsonObject(hf + "/config.json")["quantization_config"])
        assertSucceeded(try coquant(["export", folder, "--format", "hf", "--out", hf, "--overwrite"]))
        XCTAssertEqual(try jsonObject(hf + "/config.json")["torch_dtype"] as? String, "float16")
        _ = try TensorFile(hf + "/model.safetensors").raw("model.norm.weight", dtype: "F16", as: UInt16.self)

        // An existing folder is kept unless --overwrite; --type is gguf's and hf's.
        assertRefused(try coquant(["export", folder, "--format", "compressed-tensors", "--out", out]), mentioning: [out, "--overwrite"], usage: nil)
        assertSucceeded(try coquant(["export", folder, "--format", "compressed-tensors", "--out", out, "--overwrite"]))
        assertRefused(try coquant(["export", folder, "--format", "compressed-tensors", "--type", "f16", "--out", path("f16-ct")]),
                      mentioning: ["--type", "hf"], usage: "export")
        assertNothingWritten(at: path("f16-ct"))
    }

    func testCompressedTensorsAndHFExportRefuseQuantizedActivations() throws {
        let model = try tinyModelWithTokenizer(), calibration = try smallTextFile("calib.txt")
        let w4a4 = try quantizedW4A4(model, calibration: calibration)
        assertRefused(try coquant(["export", w4a4, "--format", "compressed-tensors", "--out", path("w4a4-ct")]),
                      mentioning: [w4a4, "activations"], usage: nil)
        assertNothingWritten(at: path("w4a4-ct"))
        assertRefused(try coquant(["export", w4a4, "--format", "hf", "--out", path("w4a4-hf")]), mentioning: [w4a4, "activations", "lose"], usage: nil)
        assertNothingWritten(at: path("w4a4-hf"))
        let w3 = path("w3")
        assertSucceeded(try coquant(["quantize", model, "--method", "rtn", "--scheme", "W3A16", "--nsamples", "1", "--seqlen", "16",
                                     "--calib-file", calibration, "--out", w3]))
        assertRefused(try coquant(["export", w3, "--format", "compressed-tensors", "--out", path("w3-ct")]), mentioning: [w3, "3-bit"], usage: nil)
        assertNothingWritten(at: path("w3-ct"))
    }
}

/// Reading the export as compressed-tensors' loader does.
private extension TensorFile {
    /// (q − 8)·scale of a symmetric 4-bit per-channel `<prefix>.weight_packed/.weight_scale/.weight_shape`, [out, in].
    func symmetric4BitValues(_ prefix: String) throws -> [Float] {
        let shape = try raw(prefix + ".weight_shape", dtype: "I32", as: Int32.self).values.map(Int.init)
        let (words, packedShape) = try raw(prefix + ".weight_packed", dtype: "I32", as: Int32.self)
        let (scales, scaleShape) = try raw(prefix + ".weight_scale", dtype: "F32", as: Float.self)
        let rows = shape[0], cols = shape[1]
        XCTAssertEqual(packedShape, [rows, cols / 8], prefix)
        XCTAssertEqual(scaleShape, [rows, 1], prefix)
        return (0..<(rows * cols)).map { i in
            let r = i / cols, c = i % cols
            let q = Int(UInt32(bitPattern: words[r * cols / 8 + c / 8]) >> UInt32(c % 8 * 4) & 15) - 8
            return Float(q) * scales[r]
        }
    }
}
