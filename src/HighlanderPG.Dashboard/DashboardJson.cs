using System.Globalization;
using System.Text.Json;
using HighlanderPG.Discovery;

namespace HighlanderPG.Dashboard;

/// <summary>The JSON of the dashboard's <c>api/snapshot</c> endpoint (keys are strings: 64-bit keys do not fit a JavaScript number).</summary>
internal static class DashboardJson
{
    public sealed record Actions(bool Enabled, bool Allowed, string? Token, string? HeaderName);

    public static void Write(
        Utf8JsonWriter w,
        string title,
        DashboardMonitor monitor,
        Actions actions)
    {
        var (snapshot, error, handOvers, watchingSince) = monitor.Current;
        var local = monitor.Local;
        var localStatus = local?.GetAll().ToDictionary(s => s.Key) ?? [];
        var names = snapshot?.Singletons.ToDictionary(s => s.Key, s => s.Name) ?? [];

        w.WriteStartObject();
        w.WriteString("title", title);
        Time(w, "takenAt", snapshot?.TakenAt);
        Str(w, "namespace", snapshot?.Namespace);
        Str(w, "error", error);
        Str(w, "detailsUnavailable", snapshot?.DetailsUnavailable);
        w.WriteNumber("pollIntervalMs", (long)monitor.Interval.TotalMilliseconds);
        Time(w, "watchingSince", watchingSince);
        Str(w, "thisNode", local?.NodeId);

        w.WriteStartArray("nodes");
        foreach (var node in snapshot?.Nodes ?? [])
        {
            w.WriteStartObject();
            w.WriteString("node", node.NodeId);
            w.WriteBoolean("isThisNode", node.NodeId == local?.NodeId);
            Sessions(w, "lockSessions", node.LockSessions);
            Sessions(w, "waitSessions", node.WaitSessions);
            Keys(w, "leading", node.Leading, names);
            Keys(w, "waitingOn", node.WaitingOn, names);
            var holdOffs = monitor.HoldOffs.Where(h => h.NodeId == node.NodeId).ToList();
            Time(w, "drainedUntil", holdOffs.Where(h => h.Key is null).Select(h => (DateTimeOffset?)h.Until).Max());
            Keys(w, "heldOff", [.. holdOffs.Where(h => h.Key is not null).Select(h => h.Key!.Value).Distinct()], names);
            w.WriteEndObject();
        }

        w.WriteEndArray();

        w.WriteStartArray("singletons");
        foreach (var s in snapshot?.Singletons ?? [])
        {
            w.WriteStartObject();
            w.WriteString("key", s.Key.ToString(CultureInfo.InvariantCulture));
            Str(w, "name", s.Name);
            Str(w, "namespace", s.Namespace);
            w.WritePropertyName("leader");
            Session(w, s.Leader);
            Time(w, "since", s.Since);
            Num(w, "epoch", s.FencingEpoch);
            Num(w, "lastEpoch", s.LastEpoch);
            Str(w, "endpoint", s.Endpoint);
            Str(w, "host", s.Host);
            Str(w, "lastNode", s.LastNodeId);
            Sessions(w, "followers", s.Followers);
            w.WritePropertyName("onThisNode");
            Local(w, localStatus.GetValueOrDefault(s.Key));
            w.WriteEndObject();
        }

        w.WriteEndArray();

        w.WriteStartArray("handOvers");
        foreach (var h in handOvers)
        {
            w.WriteStartObject();
            w.WriteString("key", h.Key.ToString(CultureInfo.InvariantCulture));
            Str(w, "name", h.Name);
            Str(w, "from", h.From);
            Str(w, "to", h.To);
            Num(w, "fromEpoch", h.FromEpoch);
            Num(w, "toEpoch", h.ToEpoch);
            Time(w, "observedAt", h.ObservedAt);
            w.WriteEndObject();
        }

        w.WriteEndArray();

        w.WriteStartObject("actions");
        w.WriteBoolean("enabled", actions.Enabled);
        w.WriteBoolean("allowed", actions.Allowed);
        Str(w, "token", actions.Token);
        Str(w, "headerName", actions.HeaderName);
        w.WriteEndObject();
        w.WriteEndObject();
    }

    private static void Local(Utf8JsonWriter w, SingletonStatus? status)
    {
        if (status is null)
        {
            w.WriteNullValue();
            return;
        }

        w.WriteStartObject();
        w.WriteString("state", status.State.ToString());
        w.WriteString("since", status.Since);
        w.WriteNumber("restarts", status.Restarts);
        Str(w, "lastError", status.LastError);
        Num(w, "epoch", status.FencingEpoch);
        w.WriteEndObject();
    }

    private static void Keys(Utf8JsonWriter w, string name, IReadOnlyList<long> keys, Dictionary<long, string?> names)
    {
        w.WriteStartArray(name);
        foreach (var key in keys)
        {
            w.WriteStringValue(names.GetValueOrDefault(key) ?? "key " + key.ToString(CultureInfo.InvariantCulture));
        }

        w.WriteEndArray();
    }

    private static void Sessions(Utf8JsonWriter w, string name, IReadOnlyList<LeaderInfo> sessions)
    {
        w.WriteStartArray(name);
        foreach (var session in sessions)
        {
            Session(w, session);
        }

        w.WriteEndArray();
    }

    private static void Session(Utf8JsonWriter w, LeaderInfo? session)
    {
        if (session is null)
        {
            w.WriteNullValue();
            return;
        }

        w.WriteStartObject();
        Str(w, "node", session.NodeId);
        w.WriteNumber("backendPid", session.BackendPid);
        Str(w, "applicationName", session.ApplicationName);
        Str(w, "clientAddress", session.ClientAddress);
        Time(w, "sessionStarted", session.SessionStarted);
        w.WriteEndObject();
    }

    private static void Str(Utf8JsonWriter w, string name, string? value)
    {
        if (value is null)
        {
            w.WriteNull(name);
        }
        else
        {
            w.WriteString(name, value);
        }
    }

    private static void Num(Utf8JsonWriter w, string name, long? value)
    {
        if (value is null)
        {
            w.WriteNull(name);
        }
        else
        {
            w.WriteNumber(name, value.Value);
        }
    }

    private static void Time(Utf8JsonWriter w, string name, DateTimeOffset? value)
    {
        if (value is null)
        {
            w.WriteNull(name);
        }
        else
        {
            w.WriteString(name, value.Value);
        }
    }
}
