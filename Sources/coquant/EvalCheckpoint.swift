import CoQuantEval
import Foundation

/// What an eval run computes, recorded in its checkpoint so `--resume` refuses to mix results of other settings.
/// Paths are absolute, so a resume from another folder still matches.
struct EvalSettings: Codable, Equatable {
    let model: String
    let tasks: [String]
    /// Per task, the folder its data was read from.
    let data: [String]
    let limit: Int?
    /// --batch-tokens: the packing changes the GEMMs' rounding, so a resume keeps it (nil in checkpoints written
    /// before packing existed, which scored each doc alone).
    var batchTokens: Int? = nil
    /// --max-length as given (nil: the model's max_position_embeddings, fixed by `model`).
    let maxLength: Int?
    let ppl: Bool
    let windows: Int?
    let seqlen: Int
    let klVs: String?
    let klTopK: Int
    /// Sizes and modification times of the model's files: a model replaced at the same path between the interrupted
    /// run and its resume (re-quantized with --overwrite) would otherwise mix two models' results.
    var modelFiles: String? = nil

    enum CodingKeys: String, CodingKey {
        case model, tasks, data, limit, batchTokens = "batch_tokens", maxLength = "max_length", ppl, windows, seqlen, klVs = "kl_vs", klTopK = "kl_top_k",
             modelFiles = "model_files"
    }

    /// "name size mtime" of a model file, or of a model folder's config.json and *.safetensors files.
    static func fileStamp(_ path: String) -> String {
        let fm = FileManager.default
        var isFolder: ObjCBool = false
        guard fm.fileExists(atPath: path, isDirectory: &isFolder) else { return "missing" }
        let files = isFolder.boolValue
            ? ((try? fm.contentsOfDirectory(atPath: path)) ?? []).filter { $0 == "config.json" || $0.hasSuffix(".safetensors") }.sorted()
                .map { path + "/" + $0 }
            : [path]
        return files.map { file in
            let a = (try? fm.attributesOfItem(atPath: file)) ?? [:]
            let size = (a[.size] as? Int) ?? -1
            let modified = (a[.modificationDate] as? Date)?.timeIntervalSince1970 ?? 0
            return "\((file as NSString).lastPathComponent) \(size) \(Int(modified))"
        }.joined(separator: ", ")
    }

    /// `--limit 100 then, 200 now` for every setting in which `saved` differs from these.
    func differences(from saved: EvalSettings) -> [String] {
        func show<T>(_ v: T?) -> String { v.map { "\($0)" } ?? "none" }
        let settings: [(String, (EvalSettings) -> String)] = [
            ("model", \.model), ("model files", { show($0.modelFiles) }), ("--tasks", { $0.tasks.joined(separator: ",") }),
            ("--data (task data read from)", { Set($0.data).count == 1 ? $0.data[0] : $0.data.joined(separator: ", ") }),
            ("--limit", { show($0.limit) }), ("--batch-tokens", { "\($0.batchTokens ?? 1)" }),
            ("--max-length", { show($0.maxLength) }), ("--ppl", { "\($0.ppl)" }), ("--windows", { show($0.windows) }),
            ("--seqlen", { "\($0.seqlen)" }), ("--kl-vs", { show($0.klVs) }), ("--kl-top-k", { "\($0.klTopK)" }),
        ]
        return settings.compactMap { name, value in
            value(saved) == value(self) ? nil : "\(name) \(value(saved)) then, \(value(self)) now"
        }
    }
}

/// The checkpoint of an eval run in progress (`OUT.partial/`, the convention of `quantize --resume`), so `--resume`
/// continues after the last finished doc: `state.json` (the `EvalSettings`, which must match) and
/// `samples/<task>.jsonl`, the lines of the final samples file for the docs finished so far, one appended per doc.
struct EvalCheckpointStore {
    let folder: String

    init(output: String) { folder = output + ".partial" }

    func samplesPath(_ task: String) -> String { folder + "/samples/\(task).jsonl" }

    /// Starts a fresh checkpoint folder (removing an old one).
    func start(_ settings: EvalSettings) throws {
        try? FileManager.default.removeItem(atPath: folder)
        do {
            try FileManager.default.createDirectory(atPath: folder + "/samples", withIntermediateDirectories: true)
            try encodeJSON(settings).write(to: URL(fileURLWithPath: folder + "/state.json"), options: .atomic)
        } catch {
            throw RunError("\(folder): cannot create the checkpoint folder: \(error.failureReason)")
        }
    }

    /// The finished docs of each task in `tasks` (in order) of an interrupted run with the same settings. A last line
    /// without its newline (the process was killed while writing it) is dropped, so that doc is scored again.
    func load(_ settings: EvalSettings, tasks: [String]) throws -> [[DocResult]] {
        let state = folder + "/state.json"
        guard let data = FileManager.default.contents(atPath: state) else {
            throw RunError("\(folder): no checkpoint to resume from (run without --resume first)")
        }
        guard let saved = try? JSONDecoder().decode(EvalSettings.self, from: data) else {
            throw RunError("\(state): malformed checkpoint state (pass --overwrite instead of --resume to start over)")
        }
        guard saved == settings else {
            let differences = settings.differences(from: saved)
            throw RunError("\(state): the interrupted run had other settings (\(differences.isEmpty ? "see the file" : differences.joined(separator: "; "))); resume with the same ones, or pass --overwrite instead of --resume to start over")
        }
        return try tasks.map { task in
            let path = samplesPath(task)
            guard let data = FileManager.default.contents(atPath: path) else { return [] }
            let lines = data.split(separator: 0x0A, omittingEmptySubsequences: false).dropLast().map { Data($0) }
            return try lines.enumerated().map { i, line in
                do { return try JSONDecoder().decode(DocResult.self, from: line) } catch {
                    throw RunError("\(path):\(i + 1): not a sample line (\(error)); pass --overwrite instead of --resume to start over")
                }
            }
        }
    }

    /// Opens `samples/<task>.jsonl` for appending, holding exactly the lines of `done` (a dropped partial line
    /// must not stay in front of the next one).
    func samplesWriter(task: String, done: [DocResult]) throws -> FileHandle {
        let url = URL(fileURLWithPath: samplesPath(task))
        try sampleLines(done).write(to: url, options: .atomic)
        let handle = try FileHandle(forWritingTo: url)
        try handle.seekToEnd()
        return handle
    }

    func remove() { try? FileManager.default.removeItem(atPath: folder) }
}

/// Samples as `samples/<task>.jsonl` holds them: one JSON object with sorted keys per line.
func sampleLines(_ samples: [DocResult]) throws -> Data {
    let e = JSONEncoder()
    e.outputFormatting = [.sortedKeys]
    var lines = Data()
    for s in samples { lines.append(try e.encode(s)); lines.append(0x0A) }
    return lines
}
