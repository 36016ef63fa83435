namespace HighlanderPG.Benchmarks.Measurement;

/// <summary>What the scale suite measured (serialised as the JSON report).</summary>
internal sealed class ScaleResults
{
    public List<SteadyNode> Steady { get; } = [];

    public StartTogether? StartTogether { get; set; }

    /// <summary>Fail-overs of the node leading the most in the big cluster.</summary>
    public List<Failover> Failovers { get; } = [];

    /// <summary>Fail-overs of a lone singleton (two nodes, one singleton), the baseline of the same run.</summary>
    public List<Failover> SingleFailovers { get; } = [];

    public List<string> Errors { get; } = [];

    public List<string> Notes { get; } = [];
}

/// <summary>One node of the steady-state case, over the idle window.</summary>
/// <param name="Sessions">Its sessions in <c>pg_stat_activity</c> (<c>highlander/ID</c> and <c>highlander-wait/ID</c>), the most seen in the window.</param>
/// <param name="StatementsPerSecond">Statements its sessions ran, per second, from the server's log; null where not measured.</param>
/// <param name="ErrorsPerSecond">ERROR lines the server logged for its sessions, per second; null where not measured.</param>
/// <param name="NodeCpuPercent">CPU of the node process, percent of one core.</param>
/// <param name="BackendCpuPercent">CPU of its server backends, percent of one core.</param>
internal sealed record SteadyNode(
    int Singletons, string Role, string NodeId, int Running, int Sessions, int LockSessions, int WaitSessions,
    double? StatementsPerSecond, double? LockStatementsPerSecond, double? WaitStatementsPerSecond, double? ErrorsPerSecond,
    double NodeCpuPercent, double? BackendCpuPercent, double? RssMiB, double WindowSeconds)
{
    /// <summary>What its sessions ran in the window: session ("lock" or "wait") and statement text (cut at 120 characters) to count.</summary>
    public Dictionary<string, int> Statements { get; init; } = [];
}

/// <summary>N nodes x M singletons started together.</summary>
internal sealed record StartTogether(
    int Nodes, int Singletons, double FirstReadyMs, double AllReadyMs, double FirstRunningMs, double AllRunningMs, double? ServerCpuMs, double NodesCpuMs,
    IReadOnlyList<NodeCount> Spread);

internal sealed record NodeCount(string NodeId, int Running);

/// <summary>One fault of the node leading the most: how long until each of its singletons ran elsewhere.</summary>
/// <param name="Fault"><c>kill</c> (SIGKILL) or <c>term</c> (SIGTERM, graceful).</param>
/// <param name="Led">How many singletons the victim ran when hit.</param>
/// <param name="Leaders">How many live nodes ran at least one singleton when it was hit (the victim included).</param>
/// <param name="TakeOverMs">Per singleton, from the fault to its child starting on another node; sorted.</param>
/// <param name="Missing">Singletons not running elsewhere at the cap.</param>
/// <param name="VictimExitMs">From the fault to the benchmark seeing the victim's process exit.</param>
/// <param name="VictimLastStopMs">SIGTERM: from the fault to the victim's last child returning (its own timestamp).</param>
internal sealed record Failover(
    string Fault, int Repetition, string Victim, int Led, int Leaders, IReadOnlyList<double> TakeOverMs, int Missing, double? VictimExitMs, double? VictimLastStopMs)
{
    public double? P50 => TakeOverMs.Count == 0 ? null : Summary.Of(TakeOverMs).P50!.Value.Milliseconds;

    public double? Last => TakeOverMs.Count == 0 ? null : TakeOverMs[^1];

    public double? First => TakeOverMs.Count == 0 ? null : TakeOverMs[0];
}
