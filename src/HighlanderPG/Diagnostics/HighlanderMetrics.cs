using System.Diagnostics;
using System.Diagnostics.Metrics;

namespace HighlanderPG.Diagnostics;

/// <summary>
/// HighlanderPG's one <see cref="Meter"/>, named <c>HighlanderPG</c>, with OpenTelemetry-style instrument names.
/// Measurements are tagged, where it applies, with the singleton (<c>highlander.singleton</c>) and nothing else: the
/// node id's default contains the process id, so a node tag would start new time series at every restart. The node's
/// identity belongs in the OpenTelemetry resource (<c>service.instance.id</c>), which the exporter adds to every series.
/// </summary>
internal static class HighlanderMetrics
{
    public const string MeterName = HighlanderDiagnostics.MeterName;

    private static readonly Meter Meter = new(MeterName, typeof(HighlanderMetrics).Assembly.GetName().Version?.ToString());

    public static readonly Counter<long> Acquisitions = Meter.CreateCounter<long>("highlander.acquisitions", "{acquisition}", "Locks acquired by this node.");

    public static readonly Counter<long> LeadershipLosses = Meter.CreateCounter<long>("highlander.leadership.losses", "{loss}", "Leaderships lost other than by a graceful release.");

    public static readonly Counter<long> Restarts = Meter.CreateCounter<long>("highlander.child.restarts", "{restart}", "Child restarts after an exit or failure.");

    public static readonly Counter<long> Escalations = Meter.CreateCounter<long>("highlander.escalations", "{escalation}", "Children that could not be stopped in time, and crash loops.");

    public static readonly Counter<long> SessionLosses = Meter.CreateCounter<long>("highlander.session.losses", "{loss}", "Lock sessions lost (broken, expired, refused).");

    public static readonly Histogram<double> RoundTrip = Meter.CreateHistogram<double>("highlander.session.round_trip.duration", "s", "Round trips of the lock session (heartbeats, acquisitions, releases).");

    public static readonly Histogram<double> ChildStop = Meter.CreateHistogram<double>("highlander.child.stop.duration", "s", "Time a child took to stop after it was told to.");

    public static TagList Tags(string? singleton = null)
    {
        var tags = default(TagList);
        if (singleton is not null)
        {
            tags.Add("highlander.singleton", singleton);
        }

        return tags;
    }
}
