import Foundation
import XCTest

/// `coquant export --format gguf`: the file computes what the folder computes, and what a GGUF cannot carry is refused
/// with nothing written. (scripts/interop-test.sh loads the same kind of files in llama.cpp itself.)
extension CLITests {
    /// A Q4_0 folder (solved on the fp16 grid) and its GGUF give the same perplexity to the last digit: same codes,
    /// same scales, q/k rows permuted back by our GGUF loader exactly as llama.cpp's converter permuted them.
    func testGGUFExportComputesTheFolder() throws {
        let model = try tinyModelWithTokenizer(), calibration = try smallTextFile("calib.txt")
        let folder = path("q4_0"), gguf = path("out/q4_0.gguf")
        assertSucceeded(try coquant(["quantize", model, "--method", "gptq", "--scheme", "Q4_0", "--nsamples", "2", "--seqlen", "16",
                                     "--calib-file", calibration, "--out", folder]))
        let e = try coquant(["export", folder, "--format", "gguf", "--out", gguf])
        assertSucceeded(e)
        XCTAssertTrue(e.stdout.contains("Q4_0 ×28"), e.transcript)
        XCTAssertTrue(e.stdout.contains("are fp16 values: the file holds exactly the folder's weights"), e.transcript)
        func ppl(_ m: String, _ extra: [String] = []) throws -> String {
            let r = try coquant(["ppl", m, "--text", calibration, "--seqlen", "32", "--quiet"] + extra)
            assertSucceeded(r)
            return r.stdout.split(separator: "\n").first { $0.hasPrefix("perplexity:") }.map(String.init) ?? r.transcript
        }
        XCTAssertEqual(try ppl(gguf), try ppl(folder, ["--simulate"]))
        let inspect = try coquant(["inspect", gguf])
        XCTAssertTrue(inspect.stdout.contains("Q4_0 ×28"), inspect.transcript)

        // An existing file is kept unless --overwrite.
        let again = try coquant(["export", folder, "--out", gguf])
        assertRefused(again, mentioning: [gguf, "--overwrite"], usage: nil)
        assertSucceeded(try coquant(["export", folder, "--out", gguf, "--overwrite", "--type", "f16"]))
        XCTAssertTrue(try coquant(["inspect", gguf]).stdout.contains("F16 ×29"))
    }

    /// The K-quant mixes, solved by GPTQ on each linear's block type as llama-quantize picks it (Q4_K_M: Q4_K with
    /// Q6_K for half the v_proj/down_proj; Q3_K_M: Q3_K, Q4_K, Q5_K; Q2_K: Q2_K, Q3_K, Q4_K), export to GGUFs that
    /// compute exactly what the folders compute: the integer sub-block scales and mins come back from the grids.
    func testGGUFKQuantMixesExportWhatTheFolderComputes() throws {
        let model = try wideModelWithTokenizer(), calibration = try smallTextFile("calib.txt")
        for (scheme, types) in [("Q4_K_M", ["Q4_K ×24", "Q6_K ×4"]), ("Q3_K_M", ["Q3_K ×16", "Q4_K ×10", "Q5_K ×2"]),
                                ("Q2_K", ["Q2_K ×16", "Q3_K ×8", "Q4_K ×4"])] {
            let folder = path(scheme), gguf = path("out/\(scheme).gguf")
            assertSucceeded(try coquant(["quantize", model, "--method", "gptq", "--scheme", scheme, "--nsamples", "4", "--seqlen", "32",
                                         "--calib-file", calibration, "--out", folder]))
            let e = try coquant(["export", folder, "--format", "gguf", "--out", gguf])
            assertSucceeded(e)
            for t in types { XCTAssertTrue(e.stdout.contains(t), "\(scheme): no \(t) in\n\(e.transcript)") }
            XCTAssertTrue(e.stdout.contains("are fp16 values: the file holds exactly the folder's weights"), e.transcript)
            func ppl(_ m: String, _ extra: [String] = []) throws -> Double {
                let r = try coquant(["ppl", m, "--text", calibration, "--seqlen", "32", "--quiet"] + extra)
                assertSucceeded(r)
                return try XCTUnwrap(printedPerplexity(r), r.transcript)
            }
            let fromFile = try ppl(gguf), fromFolder = try ppl(folder, ["--simulate"])
            XCTAssertEqual(fromFile, fromFolder, accuracy: 1e-4 * fromFolder, scheme)
        }
    }

    /// `--weight-grid` makes the grid the user's choice: QuaRot's signed grid for a GPTQ run (the CoQuant reference's
    /// W4A16 configuration, with --w-clip), or a GGUF block type's exact grid, which then exports as that type.
    func testWeightGridChoice() throws {
        let model = try wideModelWithTokenizer(), calibration = try smallTextFile("calib.txt")
        let quarot = path("quarot-grid"), q6 = path("q6k-grid")
        assertSucceeded(try coquant(["quantize", model, "--method", "gptq", "--scheme", "W4A16", "--weight-grid", "quarot", "--w-clip",
                                     "--nsamples", "2", "--seqlen", "32", "--calib-file", calibration, "--out", quarot]))
        let weights = try XCTUnwrap((try jsonObject(quarot + "/config.json")["quantization_config"] as? [String: Any])?["weights"] as? [String: Any])
        XCTAssertTrue((weights["grid"] as? String)?.hasPrefix("quarot WeightQuantizer") == true, "\(weights)")
        XCTAssertEqual(weights["mse_clip"] as? Bool, true)
        assertSucceeded(try coquant(["quantize", model, "--method", "gptq", "--scheme", "W6A16g16", "--weight-grid", "Q6_K",
                                     "--nsamples", "2", "--seqlen", "32", "--calib-file", calibration, "--out", q6]))
        let e = try coquant(["export", q6, "--out", path("q6k.gguf")])
        assertSucceeded(e)
        XCTAssertTrue(e.stdout.contains("Q6_K ×28") && e.stdout.contains("the file holds exactly the folder's weights"), e.transcript)
        assertRefused(try coquant(["quantize", model, "--method", "gptq", "--scheme", "W4A16", "--weight-grid", "Q4_0", "--out", path("x")]),
                      mentioning: ["--weight-grid Q4_0", "W4A16g32"], usage: "quantize")
        assertRefused(try coquant(["quantize", model, "--method", "gptq", "--weight-grid", "nearest", "--out", path("y")]),
                      mentioning: ["unknown --weight-grid nearest"], usage: "quantize")
    }

    /// QuaRot with --no-online-rotations keeps only the rotations that fuse into weights, so its weight-only result is a
    /// plain model: it exports (here on the Q4_K_M grids) and the GGUF computes the folder; with its online Hadamards
    /// the export is refused, naming them.
    func testQuaRotWithFusedRotationsOnlyExports() throws {
        let model = try wideModelWithTokenizer(), calibration = try smallTextFile("calib.txt")
        let fused = path("quarot-fused"), online = path("quarot-online")
        assertSucceeded(try coquant(["quantize", model, "--method", "quarot", "--scheme", "Q4_K_M", "--no-online-rotations",
                                     "--nsamples", "2", "--seqlen", "32", "--calib-file", calibration, "--out", fused, "--format", "gguf"]))
        func ppl(_ m: String, _ extra: [String] = []) throws -> Double {
            let r = try coquant(["ppl", m, "--text", calibration, "--seqlen", "32", "--quiet"] + extra)
            assertSucceeded(r)
            return try XCTUnwrap(printedPerplexity(r), r.transcript)
        }
        XCTAssertEqual(try ppl(fused + ".gguf"), try ppl(fused, ["--simulate"]), accuracy: 1e-3)
        assertSucceeded(try coquant(["quantize", model, "--method", "quarot", "--scheme", "Q4_K_M", "--nsamples", "2", "--seqlen", "32",
                                     "--calib-file", calibration, "--out", online]))
        assertRefused(try coquant(["export", online, "--out", path("online.gguf")]), mentioning: ["down_proj_input", "--no-online-rotations"], usage: nil)
        assertRefused(try coquant(["quantize", model, "--method", "rtn", "--no-online-rotations", "--out", path("z")]),
                      mentioning: ["--no-online-rotations", "quarot"], usage: "quantize")
    }

    func testGGUFExportRefusesWhatItCannotCarry() throws {
        let model = try tinyModelWithTokenizer(), calibration = try smallTextFile("calib.txt")
        func quantize(_ name: String, _ args: [String]) throws -> String {
            let out = path(name)
            assertSucceeded(try coquant(["quantize", model, "--nsamples", "2", "--seqlen", "16", "--calib-file", calibration,
                                         "--out", out] + args))
            return out
        }
        let w4a4 = try quantize("w4a4", ["--method", "quarot", "--scheme", "W4A4KV4"])
        assertRefused(try coquant(["export", w4a4, "--out", path("w4a4.gguf")]), mentioning: [w4a4, "activations"], usage: nil)
        assertNothingWritten(at: path("w4a4.gguf"))
        let w3 = try quantize("w3", ["--method", "rtn", "--scheme", "W3A16"])
        assertRefused(try coquant(["export", w3, "--out", path("w3.gguf")]), mentioning: ["3-bit", "--type f16"], usage: nil)
        assertNothingWritten(at: path("w3.gguf"))
        let actOrder = try quantize("act-order", ["--method", "gptq", "--scheme", "W4A16g32", "--act-order"])
        assertRefused(try coquant(["export", actOrder, "--out", path("ao.gguf")]), mentioning: ["act-order", "32-column"], usage: nil)
        assertNothingWritten(at: path("ao.gguf"))
        let onnx = try coquant(["export", w3, "--format", "onnx", "--out", path("x")])
        XCTAssertTrue(onnx.exitedNormally && onnx.status != 0 && onnx.stderr.contains("'onnx' is invalid for '--format"), onnx.transcript)
        assertNothingWritten(at: path("x"))
    }

    /// `quantize … --format gguf` quantizes and exports in one run; what the format cannot carry is refused before work.
    func testQuantizeWithFormatExportsInOneRun() throws {
        let model = try tinyModelWithTokenizer(), calibration = try smallTextFile("calib.txt")
        let out = path("one-run")
        let r = try coquant(["quantize", model, "--method", "rtn", "--scheme", "Q8_0", "--nsamples", "1", "--seqlen", "16",
                             "--calib-file", calibration, "--out", out, "--format", "gguf"])
        assertSucceeded(r)
        XCTAssertTrue(r.stdout.contains("exported: \(out).gguf"), r.transcript)
        XCTAssertTrue(try coquant(["inspect", out + ".gguf"]).stdout.contains("Q8_0 ×29"))
        let refused = try coquant(["quantize", model, "--method", "quarot", "--scheme", "W4A4KV4", "--nsamples", "1",
                                   "--seqlen", "16", "--calib-file", calibration, "--out", path("w4a4"), "--format", "mlx"])
        assertRefused(refused, mentioning: ["--format mlx", "W4A4KV4"], usage: "quantize")
        assertNothingWritten(at: path("w4a4"))
    }
}
