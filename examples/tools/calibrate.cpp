// kvcar-calibrate — fits a model's KV-cache codecs on calibration text and writes a codec file
// that the other tools load with `--kv file:PATH`.
//
//   kvcar-calibrate --model shared/data/models/gpt2-tiny --codec linear --group layer
//                   --ratio 0.5 --out gpt2-linear-d64.kvc
//   kvcar-calibrate --model M --codec autoencoder --group layer --ratio 0.5 --layers 2-5
//                   --reuse-k 3 --reuse-v 4 --out ae.kvc                       (KV-CAR, paper)
//   kvcar-perplexity --model M --kv file:ae.kvc
//
// What it does (DESIGN.md §4):
//   1. runs the model over the text (default: WikiText-2 validation) in windows of --ctx tokens
//      and collects every layer's K and V as the model caches them (examples/models/kv_collect);
//   2. measures, for K and for V, the mean L1 distance of each group to the same group of the
//      previous layer, and picks the reused groups (--reuse-*);
//   3. fits the codec of every stored slot of the chosen --layers: PCA for `linear` (rank from
//      --ratio, --latent or --energy), the paper's autoencoder for `autoencoder` (stage 1:
//      reconstruction loss, Adam, holdout early stopping, initialised at the PCA codec);
//      every other slot stays identity f16;
//   4. writes the codec file (io/codec_file.hpp) with the calibration text's name and token
//      count and the keys it was fitted to, and reports each slot's reconstruction error and
//      the bytes per token.
//
// The last 10% of the tokens (--holdout) are never fitted on: each slot's error is reported on
// them too, so a codec fitted to too few rows shows it. Fewer fitting rows than the latent width
// are refused (PCA would be exact on them and mean nothing); fewer than 4x warn.
//
// Output: the table and the summary on stdout (with --json, one JSON object instead, and the
// table on stderr); diagnostics and progress on stderr. Every option, the output folder and
// the text are checked before the model runs.
//
// A group is one KV head (--group head) or a layer's whole K or V vector (--group layer, the
// paper's autoencoder). Reuse works on the same groups: with --group layer a reused "head" is a
// whole layer's K (or V).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <map>
#include <optional>
#include <set>
#include <tuple>
#include <string>
#include <vector>

#include "kvcar/calib/autoencoder_training.hpp"
#include "kvcar/calib/pca.hpp"
#include "kvcar/calib/reuse_selection.hpp"
#include "kvcar/codec/any.hpp"
#include "kvcar/codec/autoencoder.hpp"
#include "kvcar/codec/limits.hpp"
#include "kvcar/io/codec_file.hpp"
#include "kvcar/layout/reuse_map.hpp"

#include "examples/models/kv_collect.hpp"
#include "examples/models/tool_checks.hpp"
#include "examples/models/tool_json.hpp"
#include "examples/models/model.hpp"
#include "examples/models/tool_common.hpp"

namespace ex = kvcar::examples;
namespace calib = kvcar::calib;
namespace io = kvcar::io;
using kvcar::kv_kind;
using kvcar::require;

namespace {

const std::string tool = "kvcar-calibrate";

/// "0,1,2", "2-5", "0,3-5" or "all" -> the set of layers, each in [0, n_layers).
std::set<int> parse_layers(const std::string& text, int n_layers) {
    std::set<int> out;
    if (text == "all") {
        for (int l = 0; l < n_layers; ++l) out.insert(l);
        return out;
    }
    const auto number = [&](const std::string& s) {
        std::size_t used = 0;
        int v = -1;
        try {
            v = std::stoi(s, &used);
        } catch (const std::exception&) {
            used = 0;
        }
        require(used == s.size() && !s.empty(),
                tool + ": --layers '" + text + "': '" + s + "' is not a layer number");
        require(v >= 0 && v < n_layers, tool + ": --layers '" + text + "': layer " +
                                            std::to_string(v) + " is out of range [0, " +
                                            std::to_string(n_layers) + ")");
        return v;
    };
    std::stringstream ss(text);
    std::string item;
    while (std::getline(ss, item, ',')) {
        const std::size_t dash = item.find('-');
        if (dash == std::string::npos) {
            out.insert(number(item));
            continue;
        }
        const int a = number(item.substr(0, dash)), b = number(item.substr(dash + 1));
        require(a <= b, tool + ": --layers '" + text + "': range " + item + " is backwards");
        for (int l = a; l <= b; ++l) out.insert(l);
    }
    require(!out.empty(), tool + ": --layers '" + text + "' names no layer");
    return out;
}

std::string layers_string(const std::set<int>& layers) {
    std::string s;
    for (int l : layers) s += (s.empty() ? "" : ",") + std::to_string(l);
    return s;
}

/// "a | b | c": the names of the registered codecs or the latent storages, for --help and errors.
template <class Names>
std::string name_list(const Names& all) {
    std::string s;
    for (const auto& x : all) s += (s.empty() ? "" : " | ") + std::string(kvcar::to_string(x));
    return s;
}

/// A latent storage by its name (kvcar::to_string), or "fp8" for fp8_e4m3 as --kv spells it.
kvcar::latent_storage parse_storage(const std::string& s) {
    if (const auto st = kvcar::parse_latent_storage(s == "fp8" ? "fp8_e4m3" : s)) return *st;
    throw kvcar::error("kvcar: " + tool + ": --storage '" + s + "' is not one of " +
                       name_list(kvcar::all_latent_storages));
}

/// Bytes one record of `d` latent elements takes in `storage` (as the codecs compute it).
std::size_t record_bytes(int d, kvcar::latent_storage storage) {
    // The identity codec of width d in that storage has exactly such a record.
    kvcar::any_codec c = kvcar::any_codec::of(kvcar::identity_codec<float>{d});
    c.storage = storage;
    return c.bytes_per_group();
}

/// A seed for one slot that does not depend on which other slots are trained, so the
/// autoencoder of (layer, group, K/V) is the same whether 2 or 6 layers get one.
std::uint64_t slot_seed(std::uint64_t seed, int layer, int group, kv_kind kind) {
    std::uint64_t x = seed ^ (0x9E3779B97F4A7C15ull * std::uint64_t(1 + layer * 4096 + group * 2 +
                                                                   int(kind)));
    x ^= x >> 31;
    x *= 0xBF58476D1CE4E5B9ull;
    x ^= x >> 29;
    return x;
}

/// Reconstruction error of `codec` on up to `max_rows` evenly spaced rows: sqrt(Σ (x̂ − x)² /
/// Σ (x − mean)²), i.e. the share of the rows' spread (about their mean) the codec loses, through
/// the exact encode/decode path (latent storage rounding and quantization included).
double relative_error(const kvcar::any_codec& codec, const std::vector<float>& rows,
                      std::size_t n_rows, std::size_t max_rows = 4096) {
    const std::size_t D = std::size_t(codec.group_width());
    std::vector<double> mean(D, 0.0);
    for (std::size_t r = 0; r < n_rows; ++r)
        for (std::size_t i = 0; i < D; ++i) mean[i] += rows[r * D + i];
    for (double& m : mean) m /= double(n_rows);
    const std::size_t step = std::max<std::size_t>(1, n_rows / max_rows);
    std::vector<std::byte> record(codec.bytes_per_group());
    std::vector<float> back(D);
    double err = 0.0, spread = 0.0;
    for (std::size_t r = 0; r < n_rows; r += step) {
        const float* x = &rows[r * D];
        codec.encode(x, record.data());
        codec.decode(record.data(), back.data());
        for (std::size_t i = 0; i < D; ++i) {
            const double e = double(back[i]) - double(x[i]);
            const double c = double(x[i]) - mean[i];
            err += e * e;
            spread += c * c;
        }
    }
    return spread > 0.0 ? std::sqrt(err / spread) : (err > 0.0 ? INFINITY : 0.0);
}

std::string slot_name(int layer, int group, kv_kind kind) {
    return "L" + std::to_string(layer) + ".G" + std::to_string(group) + "." + to_string(kind);
}

int run(int argc, char** argv) {
    // No --kv: calibration always collects exact K/V.
    std::vector<ex::option_spec> specs = ex::codec_fitting_options_spec();
    specs.push_back({"out", "PATH", "codec file to write (required)"});
    for (const ex::option_spec& s : ex::text_options_spec("calibration text", "default 32768; 0 = all"))
        specs.push_back(s);
    specs.insert(specs.end(), {
        {"ctx", "N", "window length when collecting K/V (default 512, at most the context)"},
        {"codec", "NAME", name_list(kvcar::all_codec_kinds) + " (default linear)"},
        {"group", "head|layer", "a codec per KV head or per layer's whole K/V (default layer)"},
        {"ratio", "R", "latent width d = round(R * group width), e.g. 0.5 for D/2 (default 0.5)"},
        {"latent", "d", "latent width d (instead of --ratio)"},
        {"energy", "E", "linear: smallest d keeping this fraction of the variance, per slot"},
        {"layers", "LIST", "layers that get the codec: 'all' (default), '0,1,2', '2-5'; the "
                           "others stay identity f16"},
        {"storage", "TYPE", "latent storage of the codec's slots: f16 (default), bf16, f32, "
                            "int8, fp8 (int8/fp8: per-record scale and offset)"},
        {"reuse-k", "N", "reuse the N K groups closest to the previous layer's"},
        {"reuse-v", "N", "reuse the N V groups closest to the previous layer's"},
        {"reuse-count", "N", "reuse the N groups closest to the previous layer's, K and V "
                             "ranked together"},
        {"reuse-threshold", "T", "reuse every K and V group whose mean L1 distance to the "
                                 "previous layer, divided by the layer's mean |x|, is <= T"},
        {"reuse-budget", "BYTES", "reuse K and V groups, closest first, until at least BYTES "
                                  "bytes per token are saved"},
        {"reuse-chains", "", "let (l, g) and (l-1, g) both be reused (l then reads l-2, which "
                             "was never measured; off by default)"},
        {"raw-distance", "", "rank reuse candidates by the raw L1 distance, not divided by the "
                             "layer's mean |x|"},
        {"hidden", "N", "autoencoder hidden width (default: max(D, 2d))"},
        {"slope", "S", "autoencoder LeakyReLU slope (default 0.01)"},
        {"epochs", "N", "autoencoder: most epochs (default 30)"},
        {"patience", "N", "autoencoder: stop after N epochs without a better holdout loss "
                          "(default 5)"},
        {"lr", "X", "autoencoder Adam step size (default 1e-4)"},
        {"batch", "N", "autoencoder mini-batch rows (default 256)"},
        {"train-rows", "N", "autoencoder: train on at most N rows per slot, evenly spaced "
                            "(default 16384; 0 = all)"},
        {"seed", "N", "autoencoder seed (default 0)"},
        {"no-pca-init", "", "autoencoder: start from PyTorch's default init, not the PCA codec"},
        {"holdout", "F", "fraction of the tokens (the text's last ones) never fitted on, where "
                         "each slot's error is measured (default 0.1; 0 = none)"},
        {"quiet", "", "no progress line"},
        ex::json_option_spec(),
    });
    ex::command_line cl(tool,
                        "Fits KV-cache codecs (and K/V head reuse) on calibration text and "
                        "writes a codec file for --kv file:PATH.",
                        specs);
    if (!cl.parse(argc, argv)) return 0;

    // --- options, all checked before the model runs ---
    const std::string out_path = cl.required("out");
    ex::check_output_file(tool, "out", out_path);
    const std::string model_path = cl.required("model");
    const std::string text_path = ex::text_option_path(cl);
    const bool json = cl.has("json");
    std::FILE* report = json ? stderr : stdout;  // the table and summary
    const double holdout = cl.get_double_at_least("holdout", 0.1, 0.0);
    require(holdout < 0.5, tool + ": --holdout '" + cl.get("holdout") +
                               "' must be below 0.5 (the codecs are fitted on the rest)");
    const std::string codec_name = cl.get("codec", "linear");
    const std::optional<kvcar::codec_kind> parsed_kind = kvcar::parse_codec_kind(codec_name);
    require(parsed_kind.has_value(), tool + ": --codec '" + codec_name + "' is not one of " +
                                         name_list(kvcar::all_codec_kinds));
    const kvcar::codec_kind kind = *parsed_kind;
    const std::string group_name = cl.get("group", "layer");
    require(group_name == "head" || group_name == "layer",
            tool + ": --group must be 'head' or 'layer', got '" + group_name + "'");
    const kvcar::latent_storage storage = parse_storage(cl.get("storage", "f16"));
    const int width_options = int(cl.has("ratio")) + int(cl.has("latent")) + int(cl.has("energy"));
    require(width_options <= 1, tool + ": give at most one of --ratio, --latent, --energy");
    require(kind != kvcar::codec_kind::identity || width_options == 0,
            tool + ": --codec identity stores the whole group; --ratio, --latent and --energy "
                   "do not apply");
    require(!cl.has("energy") || kind == kvcar::codec_kind::linear,
            tool + ": --energy needs --codec linear (PCA picks the rank per slot)");
    const int reuse_modes = int(cl.has("reuse-k") || cl.has("reuse-v")) +
                            int(cl.has("reuse-count")) + int(cl.has("reuse-threshold")) +
                            int(cl.has("reuse-budget"));
    require(reuse_modes <= 1, tool + ": give --reuse-k/--reuse-v, --reuse-count, "
                                     "--reuse-threshold or --reuse-budget, not several");
    const long long max_tokens = cl.get_int_at_least("max-tokens", 32768, 0);
    const int threads = ex::resolve_threads(int(cl.get_int("threads", 0)));

    const ex::language_model model =
        ex::language_model::load(model_path, ex::parse_model_options(cl));
    const ex::text_tokenizer tokenizer = ex::text_tokenizer::for_model(model, cl);
    const kvcar::kv_geometry g = model.cache_geometry();
    const int ctx = int(cl.get_int("ctx", std::min(512, model.max_positions())));
    const std::set<int> layers = parse_layers(cl.get("layers", "all"), g.n_layers);
    const int heads_per_group = group_name == "head" ? 1 : g.n_kv_heads;
    const int D = heads_per_group * g.head_dim;
    const int groups = g.n_kv_heads / heads_per_group;

    int latent = D;  // identity
    double energy = 0.0;
    if (kind != kvcar::codec_kind::identity) {
        if (cl.has("latent")) {
            latent = int(cl.get_int("latent", 0));
        } else if (cl.has("energy")) {
            energy = cl.get_double("energy", 0.0);
            require(energy > 0.0 && energy <= 1.0,
                    tool + ": --energy must be in (0, 1], got " + cl.get("energy"));
        } else {
            const double ratio = cl.get_double("ratio", 0.5);
            require(ratio > 0.0 && ratio <= 1.0,
                    tool + ": --ratio must be in (0, 1], got " + cl.get("ratio"));
            latent = std::max(1, int(std::lround(ratio * D)));
        }
        require(energy > 0.0 || (latent >= 1 && latent <= D),
                tool + ": latent width " + std::to_string(latent) + " must be in [1, group width " +
                    std::to_string(D) + "]");
    }
    calib::autoencoder_training_params ae;
    if (kind == kvcar::codec_kind::autoencoder) {
        ae.latent = latent;
        ae.hidden = int(cl.get_int("hidden", std::max(D, 2 * latent)));
        ae.slope = float(cl.get_double("slope", 0.01));
        require(std::isfinite(ae.slope), tool + ": --slope '" + cl.get("slope") +
                                             "' must be a finite number");
        ae.max_epochs = int(cl.get_int("epochs", 30));
        ae.patience = int(cl.get_int("patience", 5));
        // From the PCA start a step of 1e-3 throws away more than an epoch wins back (measured
        // on gpt2-tiny: the holdout loss never recovers); 1e-4 improves on PCA at D/4.
        ae.lr = float(cl.get_double("lr", 1e-4));
        require(std::isfinite(ae.lr) && ae.lr > 0.0f,
                tool + ": --lr '" + cl.get("lr") + "' must be a finite number > 0");
        ae.batch = int(cl.get_int("batch", 256));
        ae.threads = threads;
        ae.init_from_pca = !cl.has("no-pca-init");
        const long long seed = cl.get_int_at_least("seed", 0, 0);
        ae.seed = std::uint64_t(seed);
        ae.validate(D);  // before the (slow) collection
    }
    const long long train_rows = cl.get_int_at_least("train-rows", 16384, 0);

    // --- 1. the calibration text and its K/V ---
    const auto start = ex::clock_type::now();
    const ex::tokenized_text text = ex::read_text_option(cl, tokenizer);
    const std::vector<int>& ids = text.ids;
    const std::size_t used_tokens =
        max_tokens > 0 ? std::min(ids.size(), std::size_t(max_tokens)) : ids.size();
    std::fprintf(stderr, "model: %s (%s)\n", model.path().c_str(), model.describe().c_str());
    std::fprintf(stderr, "text: %s, %zu tokens, using %zu in windows of %d\n", text_path.c_str(),
                 ids.size(), used_tokens, ctx);

    // Rows per slot: one per token; the held-out tail is never fitted on. A fit from fewer rows
    // than the latent width reproduces those rows exactly and says nothing about the next ones.
    std::vector<std::string> warnings;
    const auto rows_split = [&](std::size_t tokens) {
        const std::size_t held = std::size_t(std::floor(holdout * double(tokens)));
        return std::pair<std::size_t, std::size_t>{tokens - held, held};
    };
    if (kind != kvcar::codec_kind::identity) {
        const int width = energy > 0.0 ? D : latent;  // by energy, the rank may reach D
        const std::size_t fit_rows = rows_split(used_tokens).first;
        const std::string what = std::to_string(fit_rows) + " rows per slot (" +
                                 std::to_string(used_tokens) + " tokens less the held-out " +
                                 cl.get("holdout", "0.1") + ")";
        require(fit_rows >= std::size_t(width),
                tool + ": " + what + " are fewer than the " +
                    (energy > 0.0 ? "group width " : "latent width ") + std::to_string(width) +
                    " to fit; a fit from so few rows is exact on them and means nothing (raise "
                    "--max-tokens, give a longer --text, or lower the width)");
        if (fit_rows < 4 * std::size_t(width)) {
            warnings.push_back(what + " are fewer than 4x the " +
                               (energy > 0.0 ? "group" : "latent") + " width " +
                               std::to_string(width) +
                               ": the codecs will fit these rows much better than new text (see "
                               "the held-out error)");
            std::fprintf(stderr, "WARNING: %s\n", warnings.back().c_str());
        }
    }
    ex::progress_line progress(!cl.has("quiet"));
    ex::kv_collect_params cp;
    cp.ctx = ctx;
    cp.max_tokens = std::size_t(max_tokens);
    cp.on_window = [&](std::size_t done, std::size_t total) {
        progress.update("collecting K/V: " + std::to_string(done) + "/" + std::to_string(total) +
                            " tokens",
                        done == total);
    };
    const ex::kv_collection kv = ex::collect_kv(model, ids, cp);
    progress.finish();
    const std::size_t fit_rows = rows_split(kv.tokens).first;
    const std::size_t held_rows = rows_split(kv.tokens).second;
    std::fprintf(stderr, "collected K/V of %zu tokens in %.1f s: %zu rows per slot to fit, %zu "
                         "held out\n",
                 kv.tokens, ex::seconds_since(start), fit_rows, held_rows);

    // Bytes per token of a stored slot as configured (PCA by energy: its fitted rank).
    std::map<std::tuple<int, int, int>, calib::pca_result> pca_fits;
    const auto is_coded = [&](int layer) { return layers.count(layer) != 0; };
    const auto pca_of = [&](int layer, int group, kv_kind k) -> const calib::pca_result& {
        const auto key = std::make_tuple(layer, group, int(k));
        auto it = pca_fits.find(key);
        if (it == pca_fits.end()) {
            const std::vector<float> rows = kv.group_rows(layer, group, heads_per_group, k);
            calib::pca_params pp;
            pp.heads = heads_per_group;
            if (energy > 0.0)
                pp.energy = energy;
            else
                pp.rank = latent;
            it = pca_fits.emplace(key, calib::fit_pca(rows.data(), fit_rows, D, pp)).first;
        }
        return it->second;
    };
    const auto slot_bytes = [&](kvcar::slot_owner o) -> std::size_t {
        if (!is_coded(o.layer)) return record_bytes(D, kvcar::latent_storage::f16);
        if (kind == kvcar::codec_kind::linear && energy > 0.0)
            return record_bytes(pca_of(o.layer, o.group, o.kind).params.rank, storage);
        return record_bytes(latent, storage);
    };

    // --- 2. reuse ---
    io::codec_set set;
    set.geometry = g;
    set.heads_per_group = heads_per_group;
    if (reuse_modes > 0) {
        const calib::reuse_distance_table kt =
            calib::reuse_distances(kv.keys, g, kv_kind::key, heads_per_group);
        const calib::reuse_distance_table vt =
            calib::reuse_distances(kv.values, g, kv_kind::value, heads_per_group);
        calib::reuse_selection_params rp;
        rp.normalized = !cl.has("raw-distance");
        rp.allow_chains = cl.has("reuse-chains");
        if (cl.has("reuse-threshold")) {
            const double t = cl.get_double("reuse-threshold", 0.0);
            set.key_reuse = calib::select_reuse_threshold(kt, t, rp);
            set.value_reuse = calib::select_reuse_threshold(vt, t, rp);
        } else if (cl.has("reuse-count")) {
            // A joint count is a byte budget where every group weighs 1.
            const long long count = cl.get_int_at_least("reuse-count", 0, 0);
            const calib::reuse_selection s = calib::select_reuse_bytes(
                kt, vt, std::size_t(count), [](kvcar::slot_owner) { return std::size_t(1); }, rp);
            set.key_reuse = s.key;
            set.value_reuse = s.value;
        } else if (cl.has("reuse-budget")) {
            const long long bytes = cl.get_int_at_least("reuse-budget", 0, 0);
            const calib::reuse_selection s =
                calib::select_reuse_bytes(kt, vt, std::size_t(bytes), slot_bytes, rp);
            set.key_reuse = s.key;
            set.value_reuse = s.value;
        } else {
            set.key_reuse = calib::select_reuse_budget(kt, int(cl.get_int("reuse-k", 0)), rp);
            set.value_reuse = calib::select_reuse_budget(vt, int(cl.get_int("reuse-v", 0)), rp);
        }
        std::fprintf(stderr, "reuse: %zu K and %zu V groups (of %d each)\n", set.key_reuse.size(),
                     set.value_reuse.size(), g.n_layers * groups);
        for (const auto* table : {&kt, &vt}) {
            const auto& chosen = table == &kt ? set.key_reuse : set.value_reuse;
            for (const kvcar::reuse_entry& e : chosen)
                std::fprintf(stderr, "  %s reads L%d.G%d  (distance %.4f, normalized %.4f)\n",
                             slot_name(e.layer, e.group, table->kind).c_str(), e.source_layer,
                             e.source_group, table->distance(e.layer, e.group),
                             table->normalized(e.layer, e.group));
        }
    }

    // --- 3. a codec per stored slot ---
    const kvcar::reuse_map map = set.layout();
    // rel.err: on the fitted rows; held-out: on the text's last rows, never fitted on.
    std::fprintf(report, "%-10s %-12s %6s %6s %9s %9s %s\n", "slot", "codec", "d", "bytes",
                 "rel.err", "held-out", "notes");
    std::fflush(report);
    kvcar::io::json_value slots_json = kvcar::io::json_value::array();
    for (int slot = 0; slot < map.n_slots(); ++slot) {
        const kvcar::slot_owner o = map.owner(slot);
        io::slot_codec sc;
        std::string note;
        if (!is_coded(o.layer)) {
            sc = io::slot_codec::identity(o.layer, o.group, o.kind, D, kvcar::latent_storage::f16);
        } else if (kind == kvcar::codec_kind::identity) {
            sc = io::slot_codec::identity(o.layer, o.group, o.kind, D, storage);
        } else if (kind == kvcar::codec_kind::linear) {
            const calib::pca_result& p = pca_of(o.layer, o.group, o.kind);
            char buf[64];
            std::snprintf(buf, sizeof buf, "energy kept %.4f (fitted rows)", p.retained_energy);
            note = buf;
            sc = io::slot_codec::make_linear(o.layer, o.group, o.kind, p.params, storage);
        } else {
            std::vector<float> rows = kv.group_rows(o.layer, o.group, heads_per_group, o.kind);
            std::size_t n = fit_rows;
            rows.resize(n * std::size_t(D));
            // Evenly spaced rows: training cost grows with rows, and neighbouring tokens of one
            // window are strongly correlated, so a spread-out subset loses little.
            if (train_rows > 0 && n > std::size_t(train_rows)) {
                std::vector<float> sub(std::size_t(train_rows) * std::size_t(D));
                for (std::size_t r = 0; r < std::size_t(train_rows); ++r) {
                    const std::size_t src = r * n / std::size_t(train_rows);
                    std::copy_n(&rows[src * std::size_t(D)], D, &sub[r * std::size_t(D)]);
                }
                rows.swap(sub);
                n = std::size_t(train_rows);
            }
            calib::autoencoder_training_params p = ae;
            p.seed = slot_seed(ae.seed, o.layer, o.group, o.kind);
            const auto t0 = ex::clock_type::now();
            const std::string name = slot_name(o.layer, o.group, o.kind);
            p.on_epoch = [&](int epoch, int max_epochs, double loss) {
                char line[160];
                std::snprintf(line, sizeof line, "%s: autoencoder epoch %d/%d, holdout loss %.4g, "
                                                 "%.0f s",
                              name.c_str(), epoch, max_epochs, loss, ex::seconds_since(t0));
                progress.update(line);
            };
            const calib::autoencoder_training_result r =
                calib::train_autoencoder(rows.data(), n, D, p);
            progress.finish();
            char buf[160];
            std::snprintf(buf, sizeof buf,
                          "%d epochs (best %d), holdout loss %.4g -> %.4g, %.1f s%s", r.epochs,
                          r.best_epoch,
                          r.holdout_history.empty() ? NAN : r.holdout_history.front(),
                          r.holdout_loss, ex::seconds_since(t0), r.diverged ? ", DIVERGED" : "");
            note = buf;
            sc = io::slot_codec::make_autoencoder(o.layer, o.group, o.kind,
                                                  kvcar::fold(r.params), storage);
        }
        const std::vector<float> rows = kv.group_rows(o.layer, o.group, heads_per_group, o.kind);
        const kvcar::any_codec view = sc.view();
        view.validate();
        const double fit_err = relative_error(view, rows, fit_rows);
        const std::vector<float> held(rows.begin() + std::ptrdiff_t(fit_rows * std::size_t(D)),
                                      rows.end());
        const double held_err = held_rows >= 2 ? relative_error(view, held, held_rows) : NAN;
        const std::string codec_text = std::string(to_string(sc.codec)) + "/" + to_string(sc.storage);
        std::fprintf(report, "%-10s %-12s %6d %6zu %9.4f %9.4f %s\n",
                     slot_name(o.layer, o.group, o.kind).c_str(), codec_text.c_str(),
                     sc.latent_width(), view.bytes_per_group(), fit_err, held_err, note.c_str());
        std::fflush(report);
        kvcar::io::json_value sj = kvcar::io::json_value::object();
        sj.set("slot", slot_name(o.layer, o.group, o.kind));
        sj.set("codec", to_string(sc.codec));
        sj.set("storage", to_string(sc.storage));
        sj.set("latent", sc.latent_width());
        sj.set("bytes", view.bytes_per_group());
        sj.set("rel_err", ex::json_number(fit_err));
        sj.set("held_out_rel_err", ex::json_number(held_err));
        sj.set("notes", note);
        slots_json.push_back(std::move(sj));
        set.slots.push_back(std::move(sc));
    }

    // --- 4. the file ---
    set.model.architecture = model.architecture();
    set.model.name = std::filesystem::path(model.path()).filename().string();
    if (set.model.name.empty())
        set.model.name = std::filesystem::path(model.path()).parent_path().filename().string();
    set.calibration.text = std::filesystem::path(text_path).filename().string();
    set.calibration.tokens = std::int64_t(fit_rows);
    set.keys = ex::run_keys(model);
    std::string notes = "kvcar-calibrate: codec=" + codec_name + " group=" + group_name;
    if (kind != kvcar::codec_kind::identity)
        notes += energy > 0.0 ? " energy=" + cl.get("energy") : " latent=" + std::to_string(latent);
    notes += std::string(" storage=") + to_string(storage) + " layers=" + layers_string(layers);
    if (kind == kvcar::codec_kind::autoencoder)
        notes += " hidden=" + std::to_string(ae.hidden) + " seed=" + std::to_string(ae.seed);
    notes += " holdout=" + std::to_string(held_rows);
    notes += " reuse_k=" + std::to_string(set.key_reuse.size()) +
             " reuse_v=" + std::to_string(set.value_reuse.size()) + " ctx=" + std::to_string(ctx);
    if (!model.is_gpt2()) notes += std::string(" keys=") + ex::to_string(kv.keys_form);
    set.calibration.notes = notes;
    io::save_codec_set(set, out_path);

    const std::size_t bytes = set.bytes_per_token(), fp16 = g.fp16_bytes_per_token();
    const double seconds = ex::seconds_since(start);
    std::fprintf(report, "codec file: %s\n", out_path.c_str());
    std::fprintf(report, "calibration: %s, %zu tokens fitted, %zu held out\n",
                 set.calibration.text.c_str(), fit_rows, held_rows);
    std::fprintf(report, "keys: %s\n", to_string(set.keys));
    std::fprintf(report, "notes: %s\n", notes.c_str());
    std::fprintf(report, "kv bytes/token: %zu (fp16 %zu), %.2f%% saved, compression %.2fx\n",
                 bytes, fp16, 100.0 * (1.0 - double(bytes) / double(fp16)),
                 set.compression_ratio());
    std::fprintf(report, "time: %.1f s\n", seconds);
    if (!model.is_gpt2() && kv.keys_form == ex::cached_keys::pre_rope)
        std::fprintf(report, "note: fitted to pre-RoPE keys: evaluate with --keys pre\n");
    for (const std::string& w : warnings) std::fprintf(stderr, "WARNING: %s\n", w.c_str());
    if (json) {
        kvcar::io::json_value r = ex::json_report(tool);
        r.set("codec_file", out_path);
        r.set("calibration_text", set.calibration.text);
        r.set("fit_rows", fit_rows);
        r.set("held_out_rows", held_rows);
        r.set("keys", to_string(set.keys));
        r.set("notes", notes);
        r.set("bytes_per_token", bytes);
        r.set("fp16_bytes_per_token", fp16);
        r.set("compression_vs_fp16", ex::json_number(set.compression_ratio()));
        r.set("seconds", ex::json_number(seconds));
        r.set("slots", std::move(slots_json));
        kvcar::io::json_value wj = kvcar::io::json_value::array();
        for (const std::string& w : warnings) wj.push_back(w);
        r.set("warnings", std::move(wj));
        ex::print_json_report(r);
    }
    return 0;
}

}  // namespace

int main(int argc, char** argv) { return kvcar::examples::tool_main(argc, argv, run); }
