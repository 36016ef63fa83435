namespace HighlanderPG.Benchmarks.Measurement;

/// <summary>What the spread suite measured (serialised as the JSON report).</summary>
internal sealed class SpreadResults
{
    public List<SpreadRun> Runs { get; } = [];

    public List<string> Errors { get; } = [];

    public List<string> Notes { get; } = [];

    /// <summary><c>uptime</c> when the suite started and ended (the machine is shared).</summary>
    public List<string> Uptime { get; } = [];
}

/// <summary>One run of one placement: start, kill of the node leading the most, its return.</summary>
/// <param name="LockRows">Rows in pg_locks with the cluster settled after its start.</param>
/// <param name="LockScanMs">A pg_locks scan's round trip then (p50 of 20), the cost of the membership read's scan.</param>
internal sealed record SpreadRun(
    string Placement, int Run, int Nodes, int Singletons, string Victim, int VictimLed, List<SpreadPhase> Phases, long LockRows, double LockScanMs);

/// <summary>The spread at the end of one phase.</summary>
/// <param name="Ms">From the change (start, kill, return) to the last start or stop of the phase (start, all running: to the last first start).</param>
/// <param name="HandOvers">Children that returned on nodes the benchmark did not stop, during the phase.</param>
internal sealed record SpreadPhase(string Phase, double? Ms, int Min, int Max, double StdDev, int Total, int HandOvers, List<NodeCount> PerNode)
{
    public double? TakeOverP50Ms { get; init; }

    public double? TakeOverMaxMs { get; init; }

    public int? Missing { get; init; }

    public int? ReturnedLeads { get; init; }
}
