namespace HighlanderPG.Benchmarks.Measurement;

/// <summary>What a benchmark case measured.</summary>
internal sealed class CaseResult(string id, string system, string fault, string description)
{
    private readonly List<Sample> _samples = [];
    private readonly Dictionary<string, List<double>> _components = new(StringComparer.Ordinal);
    private readonly List<string> _notes = [];
    private readonly List<double> _loads = [];

    /// <summary>The case id (<c>hl-crash</c>).</summary>
    public string Id { get; } = id;

    /// <summary>Who waits: floor, DistributedLock.Postgres or HighlanderPG.</summary>
    public string System { get; } = system;

    /// <summary>graceful, crash or cut-off.</summary>
    public string Fault { get; } = fault;

    /// <summary>What is timed, from what to what.</summary>
    public string Description { get; } = description;

    /// <summary>The non-default settings of this case, if any.</summary>
    public string? Settings { get; set; }

    /// <summary>Unmeasured iterations run first.</summary>
    public int Warmup { get; set; }

    /// <summary>Why the case stopped early, if it did.</summary>
    public string? Error { get; set; }

    /// <summary>
    /// For cases that check it: in how many iterations (warm-up included) the new child started before the old one had
    /// stopped; <see langword="null"/> when not checked.
    /// </summary>
    public int? OrderViolations { get; set; }

    /// <summary>Wall time of the case's whole group (its cases run interleaved), set-up included.</summary>
    public TimeSpan GroupElapsed { get; set; }

    /// <summary>How many cases ran interleaved with this one (itself included).</summary>
    public int GroupSize { get; set; } = 1;

    /// <summary>The machine's 1-minute load average before each measured iteration.</summary>
    public IReadOnlyList<double> LoadAverages => _loads;

    public IReadOnlyList<Sample> Samples => _samples;

    /// <summary>Parts of the hand-over, in milliseconds from the same start (e.g. "lock acquired").</summary>
    public IReadOnlyDictionary<string, List<double>> Components => _components;

    public IReadOnlyList<string> Notes => _notes;

    public Summary Summary => new(_samples);

    public void Add(Sample sample) => _samples.Add(sample);

    public void AddComponent(string name, double milliseconds)
    {
        if (!_components.TryGetValue(name, out var list))
        {
            _components[name] = list = [];
        }

        list.Add(milliseconds);
    }

    public void Note(string note) => _notes.Add(note);

    public void AddLoad(double loadAverage) => _loads.Add(loadAverage);
}
