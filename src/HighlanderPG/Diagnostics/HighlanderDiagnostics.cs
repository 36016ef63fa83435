namespace HighlanderPG.Diagnostics;

/// <summary>
/// The names under which HighlanderPG publishes its telemetry, for <c>AddSource</c> and <c>AddMeter</c> in OpenTelemetry
/// (or an <see cref="System.Diagnostics.ActivityListener"/> / <see cref="System.Diagnostics.Metrics.MeterListener"/>).
/// </summary>
public static class HighlanderDiagnostics
{
    /// <summary>
    /// The <see cref="System.Diagnostics.ActivitySource"/>: one short span per leadership event (acquired, released,
    /// stepping down, lost, escalating), tagged with the singleton, its fencing epoch and the node.
    /// </summary>
    public const string ActivitySourceName = "HighlanderPG";

    /// <summary>The <see cref="System.Diagnostics.Metrics.Meter"/>: counters and histograms tagged with the singleton only.</summary>
    public const string MeterName = "HighlanderPG";
}
