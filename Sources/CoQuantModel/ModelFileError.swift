import Foundation

/// The one error a loader throws for bad input: which file, and what is wrong with it.
/// The CLI prints `description` and exits non-zero.
public struct ModelFileError: Error, CustomStringConvertible, Equatable {
    public let file: String
    public let problem: String

    public init(_ file: String, _ problem: String) {
        self.file = file
        self.problem = problem
    }

    public var description: String { "\(file): \(problem)" }
}

extension Error {
    /// Foundation's file errors put the useful part ("Not a directory", "Permission denied") in the failure reason
    /// and only a generic sentence in the description; messages that already name the file want the reason.
    public var failureReason: String { (self as NSError).localizedFailureReason ?? localizedDescription }
}
