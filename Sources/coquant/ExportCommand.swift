import ArgumentParser
import CoQuantExport
import CoQuantModel
import Foundation

enum ExportFormat: String, ExpressibleByArgument, CaseIterable {
    case gguf
}

enum ExportType: String, ExpressibleByArgument, CaseIterable {
    case auto, f32, f16
}

struct Export: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write a CoQuant folder in a format other tools load.",
        discussion: """
        gguf: one file that llama.cpp (and Ollama, LM Studio, …) loads, with the tokenizer, the chat template and the
        architecture's metadata. Each quantized linear keeps its solved codes as the GGUF block type of its grid:
        4-bit symmetric → Q4_0, 4-bit asymmetric → Q4_1, 5-bit → Q5_0, 8-bit → Q8_0, in 32-column blocks that repeat
        their group's scale (groups of 32, 64, 128 or per channel). A GGUF stores scales as fp16: quantize with
        --scheme Q4_0 | Q5_0 | Q8_0 to solve on exactly that grid and export bit for bit; other folders have their
        scales rounded, and the summary says by how much. --type f32 | f16 writes the dequantized weights instead.

        A GGUF cannot carry quantized activations or KV cache, the online rotations of quarot/resq/coquant, act-order
        with groups, or 3-bit codes: such folders are refused, and nothing is written.

        Examples:
          coquant quantize models/SmolLM2-135M-Instruct.Q4_1.gguf --method gptq --scheme Q4_0 --out out/smollm2-q4_0
          coquant export out/smollm2-q4_0 --format gguf --out out/smollm2-q4_0.gguf
        """)

    @Argument(help: "A CoQuant folder (quantized or full precision).")
    var folder: String

    @Option(help: "Output format: gguf.")
    var format: ExportFormat = .gguf

    @Option(name: .shortAndLong, help: "Output file.")
    var out: String

    @Option(help: "auto: each tensor as the block type its codes fit; f32 | f16: every matrix dequantized.")
    var type: ExportType = .auto

    @Flag(help: "Replace OUT if it exists.")
    var overwrite = false

    @OptionGroup var output: OutputOptions

    func validate() throws {
        try checkCreatable(out, flag: "--out")
    }

    struct Summary: Codable {
        let path: String
        let format: String
        let bytes: Int
        let fileType: UInt32
        let tensorTypes: [String: Int]
        let roundedParameters: Int
        let parameters: Int
        let largestRelativeRounding: Double
    }

    func run() throws {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: folder, isDirectory: &isDir) else { throw RunError("\(folder): no such folder") }
        guard isDir.boolValue else {
            throw RunError("\(folder): export reads a CoQuant or Hugging Face folder; this is a file (a GGUF needs no export)")
        }
        try FileManager.default.createDirectory(at: URL(fileURLWithPath: out).deletingLastPathComponent(), withIntermediateDirectories: true)
        let dense: DenseType? = type == .auto ? nil : DenseType(rawValue: type.rawValue)
        let report = try GGUFExport.write(folder: folder, to: out, dense: dense, overwrite: overwrite)
        var types: [String: Int] = [:]
        for t in report.tensors { types[t.type.name, default: 0] += 1 }
        let line = "wrote \(out) (\(String(format: "%.1f", Double(report.bytes) / 1e6)) MB): \(report.typeSummary)"
        let rounding = report.roundedParameters == 0
            ? "all \(report.parameters) block scales are fp16 values: the file holds exactly the folder's weights"
            : "\(report.roundedParameters) of \(report.parameters) block scales rounded to fp16 (largest relative change \(String(format: "%.2g", report.largestRounding))); quantize with --scheme Q4_0 | Q5_0 | Q8_0 to solve on the file's grid"
        if output.json {
            try printJSON(Summary(path: out, format: format.rawValue, bytes: report.bytes, fileType: report.fileType, tensorTypes: types,
                                  roundedParameters: report.roundedParameters, parameters: report.parameters,
                                  largestRelativeRounding: report.largestRounding))
            printErr(line)
        } else {
            print(line)
            if report.parameters > 0 { print(rounding) }
        }
    }
}
