using System.Globalization;

namespace HighlanderPG.Benchmarks.Measurement;

/// <summary>Durations for people: two significant decimals for small values, seconds for large ones.</summary>
internal static class Format
{
    public static string Milliseconds(double milliseconds) => milliseconds switch
    {
        >= 10_000 => (milliseconds / 1000).ToString("0.0", CultureInfo.InvariantCulture) + " s",
        >= 100 => milliseconds.ToString("0", CultureInfo.InvariantCulture) + " ms",
        >= 10 => milliseconds.ToString("0.0", CultureInfo.InvariantCulture) + " ms",
        _ => milliseconds.ToString("0.00", CultureInfo.InvariantCulture) + " ms",
    };

    public static string Sample(Sample? sample) => sample switch
    {
        null => "–",
        { Censored: true } s => "> " + Milliseconds(s.Milliseconds),
        { } s => Milliseconds(s.Milliseconds),
    };

    public static string Ratio(double ratio) => ratio.ToString(ratio >= 10 ? "0" : "0.0", CultureInfo.InvariantCulture) + "x";
}
