// Downloads the files a conversion needs from the Hugging Face hub (or a mirror) into a local
// cache folder, over libcurl, from the hub's ordinary file URLs:
//   {endpoint}/{repo_id}/resolve/{revision}/{file}
//
// Files fetched: config.json; generation_config.json, tokenizer.json, tokenizer.model,
// tokenizer_config.json (optional, whichever exist; at least one of tokenizer.json /
// tokenizer.model is required); model.safetensors, or model.safetensors.index.json and every
// shard its weight_map names. Marian models (config.json model_type "marian") instead need
// source.spm, target.spm and vocab.json, and may have pytorch_model.bin (or its index + shards)
// in place of safetensors.
//
// Environment (an Options field that is set wins):
//   HF_ENDPOINT   hub address (default https://huggingface.co)
//   HF_TOKEN      sent as "Authorization: Bearer ..." (gated or private repositories)
//   OCTET_CACHE   cache folder; else $XDG_CACHE_HOME/octet; else ~/.cache/octet
//
// Each file is written to "<name>.<pid>.part" and renamed once complete (size checked against
// Content-Length), so a file under its final name is always whole and is never fetched again.
// When every file is present a marker (.octet-complete) is written and a later download of the
// same repo and revision makes no request at all (delete the folder to refresh a branch).
// Errors are octet::Error: InvalidArgument (bad repo id / revision), Io (network, HTTP status,
// disk), Format (a hostile or broken index), Cancelled (the progress callback said stop).
#pragma once
#include <cstdint>
#include <functional>
#include <string>

namespace octet::hub {

struct Options {
  std::string revision = "main";  // a branch, tag or commit
  std::string endpoint;           // "": $HF_ENDPOINT, else https://huggingface.co
  std::string cache_dir;          // "": see default_cache_dir()
  std::string token;              // "": $HF_TOKEN (none if unset)
  long connect_timeout_s = 20;
  long stall_timeout_s = 60;      // give up when no byte arrives for this long
};

// Called while a file downloads: its name, bytes so far, total bytes (0 when unknown).
// Return false to cancel (download() then throws ErrorCode::Cancelled).
using Progress = std::function<bool(const std::string& file, uint64_t done, uint64_t total)>;

// True for "owner/name" with hub-legal characters (letters, digits, '-', '_', '.'), no "..",
// and a name that does not end like a local file (.bin, .qbin, .safetensors, .gguf, ...).
bool looks_like_repo_id(const std::string& s);

// $OCTET_CACHE, else $XDG_CACHE_HOME/octet, else $HOME/.cache/octet.
std::string default_cache_dir();

// Downloads what is missing and returns the local folder holding the files
// (<cache>/hub/<owner>--<name>/<revision>). `progress` empty: a short report per file on stderr
// (silenced by OCTET_QUIET=1).
std::string download(const std::string& repo_id, const Options& options = {},
                     const Progress& progress = {});

// The one call a converter needs: `input` itself when it exists or is not a repo id, else
// download(input, options, progress).
std::string resolve(const std::string& input, const Options& options = {},
                    const Progress& progress = {});

}  // namespace octet::hub
