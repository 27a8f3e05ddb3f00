/// Subscriptions by topic: exact topics in one dictionary, prefix patterns in another, so a publication
/// finds its subscribers with one lookup per pattern length in use (not one check per pattern).
///
/// Each subscriber gets a publication once, however many of its filters match (`a.*` and `a.b` both
/// match `a.b`): ``forEachSubscriber(of:_:)`` skips a subscriber it has already visited for that call.
/// **Threading:** a value; one owner (keel-pubsub keeps one table per I/O thread).
public struct TopicTable<Subscriber: Hashable> {
    private var exact: [String: Set<Subscriber>] = [:]
    private var patterns: [String: Set<Subscriber>] = [:]
    /// How many patterns have each prefix length (the lengths worth looking up).
    private var patternLengths: [Int: Int] = [:]
    private var sortedPatternLengths: [Int] = []

    /// An empty table.
    public init() {}

    /// True when nobody subscribes to anything.
    public var isEmpty: Bool { exact.isEmpty && patterns.isEmpty }

    /// Subscribes `subscriber` to `filter`. - Returns: false when it already was.
    @discardableResult
    public mutating func add(_ filter: TopicFilter, _ subscriber: Subscriber) -> Bool {
        if filter.isPattern {
            let inserted = patterns[filter.text, default: []].insert(subscriber).inserted
            if inserted && patterns[filter.text]?.count == 1 { notePatternLength(filter.text.utf8.count, added: true) }
            return inserted
        }
        return exact[filter.text, default: []].insert(subscriber).inserted
    }

    /// Unsubscribes `subscriber` from `filter`. - Returns: false when it was not subscribed.
    @discardableResult
    public mutating func remove(_ filter: TopicFilter, _ subscriber: Subscriber) -> Bool {
        if filter.isPattern {
            guard patterns[filter.text]?.remove(subscriber) != nil else { return false }
            if patterns[filter.text]?.isEmpty == true {
                patterns[filter.text] = nil
                notePatternLength(filter.text.utf8.count, added: false)
            }
            return true
        }
        guard exact[filter.text]?.remove(subscriber) != nil else { return false }
        if exact[filter.text]?.isEmpty == true { exact[filter.text] = nil }
        return true
    }

    private mutating func notePatternLength(_ length: Int, added: Bool) {
        let count = patternLengths[length, default: 0] + (added ? 1 : -1)
        patternLengths[length] = count == 0 ? nil : count
        sortedPatternLengths = patternLengths.keys.sorted()
    }

    /// Calls `body` once for each subscriber a publication to `topic` reaches.
    public func forEachSubscriber(of topic: String, _ body: (Subscriber) -> Void) {
        let exactSubscribers = exact[topic]
        var matchedPatterns: [Set<Subscriber>] = []
        if !sortedPatternLengths.isEmpty {
            let bytes = topic.utf8
            for length in sortedPatternLengths {
                guard length <= bytes.count else { break }
                let prefix = length == bytes.count ? topic : String(Substring(bytes.prefix(length)))
                if let subscribers = patterns[prefix] { matchedPatterns.append(subscribers) }
            }
        }
        if matchedPatterns.isEmpty {
            exactSubscribers?.forEach(body)
            return
        }
        if exactSubscribers == nil && matchedPatterns.count == 1 {
            matchedPatterns[0].forEach(body)
            return
        }
        // Several filters match: visit each subscriber once.
        var visited = Set<Subscriber>()
        for subscriber in exactSubscribers ?? [] where visited.insert(subscriber).inserted { body(subscriber) }
        for subscribers in matchedPatterns {
            for subscriber in subscribers where visited.insert(subscriber).inserted { body(subscriber) }
        }
    }

    /// How many subscribers a publication to `topic` reaches.
    public func subscriberCount(of topic: String) -> Int {
        var count = 0
        forEachSubscriber(of: topic) { _ in count += 1 }
        return count
    }
}
