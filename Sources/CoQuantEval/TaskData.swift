import Foundation

// Readers for the task data files in data/ (provenance in data/SOURCES.md). Every problem is reported as one
// error naming the file and the 1-based line, so a user can open the file at the broken row.

public struct DataFileError: Error, CustomStringConvertible, Equatable {
    public let file: String
    public let line: Int?
    public let problem: String

    public init(_ file: String, line: Int? = nil, _ problem: String) {
        self.file = file
        self.line = line
        self.problem = problem
    }

    public var description: String { line.map { "\(file):\($0): \(problem)" } ?? "\(file): \(problem)" }
}

/// One JSON object of a JSONL file, with typed accessors that name the file, line and key when the row is wrong.
public struct JSONLRow {
    public let file: String
    public let line: Int
    public let object: [String: Any]

    public func error(_ problem: String) -> DataFileError { DataFileError(file, line: line, problem) }

    public func string(_ key: String) throws -> String {
        guard let v = object[key] as? String else { throw error("\"\(key)\" is missing or not a string") }
        return v
    }

    public func int(_ key: String) throws -> Int {
        guard let v = object[key] as? Int else { throw error("\"\(key)\" is missing or not an integer") }
        return v
    }

    public func strings(_ key: String) throws -> [String] {
        guard let v = object[key] as? [String], !v.isEmpty else { throw error("\"\(key)\" is missing or not a non-empty list of strings") }
        return v
    }
}

/// The whole file as UTF-8 text; a missing or unreadable file is one error naming it. `.bz2` files (HellaSwag) are
/// piped through `bzip2 -dc`, so CoQuantEval needs no compression library.
public func readTextFile(_ path: String) throws -> String {
    guard FileManager.default.fileExists(atPath: path) else { throw DataFileError(path, "no such file") }
    let data: Data
    if path.hasSuffix(".bz2") {
        data = try decompressBzip2(path)
    } else {
        guard let d = FileManager.default.contents(atPath: path) else { throw DataFileError(path, "cannot be read") }
        data = d
    }
    guard let text = String(data: data, encoding: .utf8) else { throw DataFileError(path, "is not UTF-8 text") }
    return text
}

func decompressBzip2(_ path: String) throws -> Data {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    p.arguments = ["bzip2", "-dc", path]
    let out = Pipe(), err = Pipe()
    p.standardOutput = out
    p.standardError = err
    do { try p.run() } catch { throw DataFileError(path, "cannot run bzip2 to decompress it (\(error)); install bzip2 or decompress the file") }
    let data = out.fileHandleForReading.readDataToEndOfFile()
    let message = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    p.waitUntilExit()
    guard p.terminationStatus == 0 else {
        throw DataFileError(path, "bzip2 -dc failed: \(message.trimmingCharacters(in: .whitespacesAndNewlines))")
    }
    return data
}

/// The lines of a text file (a final newline does not make an extra empty line).
public func readLines(_ path: String) throws -> [Substring] {
    var lines = try readTextFile(path).split(separator: "\n", omittingEmptySubsequences: false)
    if lines.last == "" { lines.removeLast() }
    return lines
}

/// Every non-blank line of a JSONL file as an object; `limit` stops after that many rows (the rest is not parsed,
/// so `--limit` runs do not pay for a whole file's JSON).
public func readJSONL(_ path: String, limit: Int? = nil) throws -> [JSONLRow] {
    var rows: [JSONLRow] = []
    for (i, line) in try readLines(path).enumerated() {
        if let limit, rows.count >= limit { break }
        if line.allSatisfy(\.isWhitespace) { continue }
        let object: Any
        do { object = try JSONSerialization.jsonObject(with: Data(line.utf8)) } catch {
            throw DataFileError(path, line: i + 1, "malformed JSON (\((error as NSError).userInfo[NSDebugDescriptionErrorKey] as? String ?? "\(error)"))")
        }
        guard let dict = object as? [String: Any] else { throw DataFileError(path, line: i + 1, "expected a JSON object") }
        rows.append(JSONLRow(file: path, line: i + 1, object: dict))
    }
    if rows.isEmpty { throw DataFileError(path, "has no rows") }
    return rows
}
