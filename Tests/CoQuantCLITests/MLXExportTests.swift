import Foundation
import XCTest

/// `coquant export --format mlx`: the folder holds the quantized folder's values in mlx-lm's layout, and what mlx-lm
/// cannot run is refused with nothing written. (scripts/interop-test.sh loads the same folders in mlx-lm itself.)
///
/// This target links no CoQuant module, so both files are read here with a few lines each: the MLX side as mlx-lm
/// reads it (uint32 words, 32/bits codes each, lowest first; value = scales·q + biases), the folder side in its v2
/// layout for the one case used, 4-bit codes in groups of 32 (PlaneLayout.swift: one plane per 32-column run, 16
/// bytes, byte j = code(j) | code(j + 16) << 4).
extension CLITests {
    func testMLXExportHoldsTheFoldersValues() throws {
        let model = try tinyModelWithTokenizer(), calibration = try smallTextFile("calib.txt")
        let folder = path("w4g32"), out = path("out/w4g32-mlx")
        assertSucceeded(try coquant(["quantize", model, "--method", "rtn", "--scheme", "W4A16g32", "--w-asym", "--nsamples", "2",
                                     "--seqlen", "16", "--calib-file", calibration, "--out", folder]))
        let e = try coquant(["export", folder, "--format", "mlx", "--out", out])
        assertSucceeded(e)
        XCTAssertTrue(e.stdout.contains("29 quantized (linears 4-bit in groups of 32"), e.transcript)

        let config = try jsonObject(out + "/config.json")
        XCTAssertEqual(config["quantization"] as? [String: Int], ["group_size": 32, "bits": 4])
        XCTAssertNil(config["quantization_config"])
        XCTAssertEqual(config["tie_word_embeddings"] as? Bool, true)
        XCTAssertTrue(FileManager.default.fileExists(atPath: out + "/tokenizer.json"))

        let mlx = try TensorFile(out + "/model.safetensors"), source = try TensorFile(folder + "/model.safetensors")
        XCTAssertNil(mlx.header["lm_head.weight"], "tied: no head")
        for l in 0..<4 {
            for (name, rows, cols) in [("self_attn.q_proj", 64, 64), ("self_attn.v_proj", 16, 64), ("self_attn.o_proj", 64, 64),
                                       ("mlp.up_proj", 160, 64), ("mlp.down_proj", 64, 160)] {
                let prefix = "model.layers.\(l).\(name)"
                let theirs = try mlx.mlxValues(prefix, bits: 4)
                XCTAssertEqual(theirs.count, rows * cols, prefix)
                let ours = try source.folderValues4Bit(prefix, rows: rows, cols: cols, groupSize: 32)
                XCTAssertLessThanOrEqual(zip(theirs, ours).map { abs($0 - $1) }.max() ?? 1, 1e-6, prefix)
            }
        }
        // The int8-row embedding table: 8-bit codes code + 128, biases −128·s.
        let codes = try source.raw("model.embed_tokens.codes", dtype: "I8", as: Int8.self).values
        let rowScales = try source.raw("model.embed_tokens.row_scales", dtype: "F32", as: Float.self).values
        let table = try mlx.mlxValues("model.embed_tokens", bits: 8)
        XCTAssertEqual(table.count, 300 * 64)
        XCTAssertLessThanOrEqual(table.indices.map { abs(table[$0] - rowScales[$0 / 64] * Float(codes[$0])) }.max() ?? 1, 1e-6)

        // An existing folder is kept unless --overwrite; --type is GGUF's.
        assertRefused(try coquant(["export", folder, "--format", "mlx", "--out", out]), mentioning: [out, "--overwrite"], usage: nil)
        assertSucceeded(try coquant(["export", folder, "--format", "mlx", "--out", out, "--overwrite"]))
        assertRefused(try coquant(["export", folder, "--format", "mlx", "--type", "f16", "--out", path("f16-mlx")]),
                      mentioning: ["--type", "gguf"], usage: "export")
        assertNothingWritten(at: path("f16-mlx"))
    }

    func testMLXExportRefusesQuantizedActivations() throws {
        let model = try tinyModelWithTokenizer(), calibration = try smallTextFile("calib.txt")
        let w4a4 = try quantizedW4A4(model, calibration: calibration)
        assertRefused(try coquant(["export", w4a4, "--format", "mlx", "--out", path("w4a4-mlx")]), mentioning: [w4a4, "activations"], usage: nil)
        assertNothingWritten(at: path("w4a4-mlx"))
    }
}

/// Reading the export as mlx-lm does.
private extension TensorFile {
    /// scales·q + biases of an MLX quantized `<prefix>`, [out, in].
    func mlxValues(_ prefix: String, bits: Int) throws -> [Float] {
        let (words, shape) = try raw(prefix + ".weight", dtype: "U32", as: UInt32.self)
        let (scales, groupShape) = try raw(prefix + ".scales", dtype: "F32", as: Float.self)
        let biases = try raw(prefix + ".biases", dtype: "F32", as: Float.self).values
        let n = 32 / bits, rows = shape[0], cols = shape[1] * n, groups = groupShape[1], g = cols / groups
        return (0..<(rows * cols)).map { i in
            let r = i / cols, c = i % cols
            let q = words[r * shape[1] + c / n] >> UInt32(c % n * bits) & (UInt32(1) << UInt32(bits) - 1)
            return scales[r * groups + c / g] * Float(q) + biases[r * groups + c / g]
        }
    }
}
