"""Harvester's PandaCommunicator, reproduced call by call for the contract test (the package is not on the package
registry, so the real class cannot be driven; see test_harvester_communicator.py).

Source: HSF/harvester, pandaharvester/harvestercommunicator/panda_communicator.py, the /api/v1 version (every call
through `request_ssl`). Each method below sends what the original sends (method, path, parameter names and how they
are encoded) and parses the answer as the original does; the comment above each quotes the source lines it follows.
Logging, stopwatches and HPO/iDDS branches are left out: they do not change what goes over the wire.
"""

from __future__ import annotations

import json
import zlib

import requests


class Communicator:
    def __init__(self, base_url: str, token: str | None, origin: str, harvester_id: str, timeout: float = 30) -> None:
        self.base_url = base_url.rstrip("/") + "/api/v1"  # pandacon.server_api_url_ssl
        self.token = token  # pandacon.auth_token (auth_type "oidc")
        self.origin = origin  # pandacon.auth_origin
        self.harvester_id = harvester_id  # harvester_config.master.harvester_id
        self.timeout = timeout
        self.sent: list[requests.PreparedRequest] = []  # what went over the wire, for the tests

    # request_ssl(self, method, path, data=None, files=None, cert=None, base_url=None):
    #   headers = {"Accept": "application/json", "Connection": "close", "Content-Type": "application/json"}
    #   if auth_type == "oidc": headers["Authorization"] = f"Bearer {self.auth_token}"; headers["Origin"] = ...
    #   GET:    session.request(method, url, data=data, headers=headers, ...)      # "URL encoding"
    #   POST:   session.request(method, url, json=data, headers=headers, ...)      # "JSON encoding in body"
    #   UPLOAD: session.post(url, files=files, headers=headers, ...)
    #   if response.status_code == 200: return True, response.json()
    #   else: err_msg = f"StatusCode={response.status_code} {response.text}"  ->  return False, err_msg
    def request_ssl(self, method: str, path: str, data: dict | None = None, files: dict | None = None):
        headers = {"Accept": "application/json", "Connection": "close", "Content-Type": "application/json"}
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
            headers["Origin"] = self.origin
        url = f"{self.base_url}/{path}"
        with requests.Session() as session:
            try:
                if method == "GET":
                    response = session.request(method, url, data=data, headers=headers, timeout=self.timeout)
                elif method == "POST":
                    response = session.request(method, url, json=data, headers=headers, timeout=self.timeout)
                else:
                    response = session.post(url, files=files, headers=headers, timeout=self.timeout)
                self.sent.append(response.request)
                if response.status_code == 200:
                    return True, response.json()
                return False, f"StatusCode={response.status_code} {response.text}"
            except Exception as exc:
                return False, f"failed to {method} with {type(exc)}:{exc} "

    # check_panda: request_ssl("GET", "system/is_alive", {}); return tmp_status, tmp_response
    def check_panda(self):
        return self.request_ssl("GET", "system/is_alive", {})

    # is_alive: datetimes -> "datetime/%Y-%m-%d %H:%M:%S.%f"; data = {"harvester_id": ..., "data": metadata};
    #   request_ssl("POST", "harvester/heartbeat", data); tmp_status = tmp_response["success"];
    #   tmp_str = tmp_response["message"] when not successful
    def is_alive(self, metadata: dict):
        ok, res = self.request_ssl("POST", "harvester/heartbeat", {"harvester_id": self.harvester_id, "data": metadata})
        if not ok:
            return ok, res
        return res["success"], "" if res["success"] else res["message"]

    # get_jobs: data = {"siteName", "node", "prodSourceLabel", "computingElement", "nJobs",
    #   "schedulerID": f"harvester-{harvester_id}"} + additional_criteria; request_ssl("POST", "pilot/acquire_jobs");
    #   tmp_dict = tmp_response["data"]; if tmp_dict["StatusCode"] == 0: return tmp_dict["jobs"], "OK";
    #   else errorDialog or f"StatusCode={...}"; on an exception: dump_error_message(tmp_response["message"])
    def get_jobs(self, site_name, node_name, prod_source_label, computing_element, n_jobs, additional_criteria=None):
        data = {
            "siteName": site_name,
            "node": node_name,
            "prodSourceLabel": prod_source_label,
            "computingElement": computing_element,
            "nJobs": n_jobs,
            "schedulerID": f"harvester-{self.harvester_id}",
        }
        data.update(additional_criteria or {})
        ok, res = self.request_ssl("POST", "pilot/acquire_jobs", data)
        if not ok:
            return [], res
        try:
            tmp_dict = res["data"]
            if tmp_dict["StatusCode"] == 0:
                return tmp_dict["jobs"], "OK"
            return [], tmp_dict.get("errorDialog", f"StatusCode={tmp_dict['StatusCode']}")
        except Exception:
            return [], res["message"]

    # update_jobs: job_dict = job_spec.get_job_attributes_for_panda() + job_id, site_name, job_status,
    #   job_sub_status, attempt_nr (cancelled/missed -> failed), start_time/end_time "%Y-%m-%d %H:%M:%S", core_count;
    #   data = {"job_list": job_list}; request_ssl("POST", "pilot/update_jobs_bulk", data);
    #   tmp_status, ret_message, ret_maps = tmp_response["success"], tmp_response["message"], tmp_response["data"];
    #   failure -> [{"content": {"StatusCode": 999, ...}}] per job; else ret_list gets each of ret_maps as it is
    def update_jobs(self, job_list: list[dict]) -> list:
        ok, res = self.request_ssl("POST", "pilot/update_jobs_bulk", {"job_list": job_list})
        ret_maps = None
        if ok and res["success"] is not False:
            ret_maps = res["data"]
        if ret_maps is None:
            ret_maps = [json.dumps({"content": {"StatusCode": 999, "ErrorDiag": str(res)}})] * len(job_list)
        return list(ret_maps)

    # get_event_ranges: per job, data (from the messenger: pandaID, taskID, jobsetID, nRanges) + "scattered";
    #   data["nRanges"] = chunk; request_ssl("POST", "event/acquire_event_ranges", data);
    #   tmp_dict = tmp_response["data"]; if tmp_dict["StatusCode"] == 0: ret_value[pandaID] += tmp_dict["eventRanges"]
    def get_event_ranges(self, data_map: dict, scattered: bool = False):
        ret_status, ret_value = False, {}
        for data in data_map.values():
            data = dict(data)
            if scattered:
                data["scattered"] = True
            ok, res = self.request_ssl("POST", "event/acquire_event_ranges", data)
            if not ok:
                continue
            try:
                tmp_dict = res["data"]
                if tmp_dict["StatusCode"] == 0:
                    ret_status = True
                    ret_value.setdefault(data["pandaID"], []).extend(tmp_dict["eventRanges"])
            except Exception:
                pass
        return ret_status, ret_value

    # update_event_ranges: data = {"event_ranges": json.dumps(event_ranges), "version": 1};
    #   request_ssl("POST", "event/update_event_ranges", data); failure -> {"StatusCode": 999};
    #   ret_map = tmp_response["data"] (None -> {"StatusCode": 999}); the caller reads ret["StatusCode"], ["Returns"]
    def update_event_ranges(self, event_ranges: list[dict]) -> dict:
        ok, res = self.request_ssl(
            "POST", "event/update_event_ranges", {"event_ranges": json.dumps(event_ranges), "version": 1}
        )
        if not ok:
            return {"StatusCode": 999}
        return res.get("data") or {"StatusCode": 999}

    # get_commands: data = {"harvester_id", "n_commands"}; request_ssl("POST", "harvester/acquire_commands");
    #   not success -> []; else tmp_response.get("data", [])
    def get_commands(self, n_commands: int) -> list:
        ok, res = self.request_ssl(
            "POST", "harvester/acquire_commands", {"harvester_id": self.harvester_id, "n_commands": n_commands}
        )
        if not ok or not res.get("success", False):
            return []
        return res.get("data", [])

    # ack_commands: data = {"command_ids": command_ids}; request_ssl("POST", "harvester/acknowledge_commands");
    #   return the success flag
    def ack_commands(self, command_ids: list) -> bool:
        ok, res = self.request_ssl("POST", "harvester/acknowledge_commands", {"command_ids": command_ids})
        return bool(ok and res.get("success", False))

    # get_proxy: data = {"role": voms_role}; request_ssl("GET", "credential/get_proxy", data);
    #   not success -> (None, message); else tmp_data["userProxy"]
    def get_proxy(self, voms_role: str, path: str = "credential/get_proxy"):
        ok, res = self.request_ssl("GET", path, {"role": voms_role})
        if not ok:
            return None, res
        if not res.get("success", False):
            return None, res.get("message")
        return res.get("data")["userProxy"], ""

    # get_token_key: data = {"client_name": client_name}; request_ssl("GET", "credential/get_token_key", data);
    #   not success -> (None, message); else tmp_data["tokenKey"]
    def get_token_key(self, client_name: str, path: str = "credential/get_token_key"):
        ok, res = self.request_ssl("GET", path, {"client_name": client_name})
        if not ok:
            return None, ""
        if not res.get("success", False):
            return None, res.get("message")
        return res.get("data")["tokenKey"], ""

    # get_resource_types: request_ssl("GET", "metaconfig/get_resource_types", {}); not success -> (None, message);
    #   ret_value = tmp_data["ResourceTypes"]
    def get_resource_types(self):
        ok, res = self.request_ssl("GET", "metaconfig/get_resource_types", {})
        if not ok:
            return None, ""
        if not res.get("success", False):
            return None, res.get("message")
        return res.get("data")["ResourceTypes"], ""

    # get_job_stats: request_ssl("GET", "statistics/active_job_stats_by_site", {}); stats = tmp_response.get("data");
    #   not success -> (stats, message); else (stats, "OK")
    def get_job_stats(self):
        ok, res = self.request_ssl("GET", "statistics/active_job_stats_by_site", {})
        if not ok:
            return {}, "FAILED"
        if not res.get("success", False):
            return res.get("data"), res.get("message")
        return res.get("data"), "OK"

    # update_workers: data = {"harvester_id": ..., "workers": json.dumps(data_list)};
    #   request_ssl("POST", "harvester/update_workers", data); not success -> (None, message); else (data, "OK")
    def update_workers(self, workers: list[dict]):
        ok, res = self.request_ssl(
            "POST", "harvester/update_workers", {"harvester_id": self.harvester_id, "workers": json.dumps(workers)}
        )
        if not ok:
            return None, res
        if not res.get("success", False):
            return None, res.get("message")
        return res.get("data"), "OK"

    # update_worker_stats: data = {"harvesterID": ..., "siteName": site_name, "paramsList": json.dumps(stats)};
    #   request_ssl("POST", "harvester/report_worker_statistics", data); (success, message or "OK")
    def update_worker_stats(self, site_name: str, stats: dict):
        ok, res = self.request_ssl(
            "POST",
            "harvester/report_worker_statistics",
            {"harvesterID": self.harvester_id, "siteName": site_name, "paramsList": json.dumps(stats)},
        )
        if not ok:
            return ok, res
        if not res.get("success", False):
            return False, res.get("message")
        return True, "OK"

    # check_jobs: job_ids = [PandaID, ...] (up to 100); data = {"job_ids": job_ids};
    #   request_ssl("GET", "job/get_status", data); job_statuses = tmp_response.get("data");
    #   per id: missing -> {"StatusCode": 999, "ErrorDiag": err}; else job_statuses[idx] + StatusCode 0, ErrorDiag
    def check_jobs(self, panda_ids: list[int]) -> list[dict]:
        ok, res = self.request_ssl("GET", "job/get_status", {"job_ids": panda_ids})
        err, statuses = "OK", []
        if not ok:
            err = res
        else:
            if not res.get("success", False):
                err = res.get("message")
            statuses = res.get("data")
        out = []
        for idx, _ in enumerate(panda_ids):
            if not statuses or idx >= len(statuses):
                out.append({"StatusCode": 999, "ErrorDiag": err})
            else:
                out.append({**statuses[idx], "StatusCode": 0, "ErrorDiag": err})
        return out

    # get_key_pair: data = {"public_key_name", "private_key_name"}; request_ssl("GET", "credential/get_key_pair");
    #   not success -> (None, message); else (tmp_response.get("data"), None)
    def get_key_pair(self, public_key_name: str, private_key_name: str):
        ok, res = self.request_ssl(
            "GET", "credential/get_key_pair", {"public_key_name": public_key_name, "private_key_name": private_key_name}
        )
        if not ok:
            return None, res
        if not res.get("success", False):
            return None, res.get("message")
        return res.get("data"), None

    # upload_file: file_object.seek(offset); files = {"file": (file_name, zlib.compress(file_object.read(n)))};
    #   request_ssl("UPLOAD", "file/update_jedi_log", files); (success, message)
    def upload_file(self, file_name: str, file_object, offset: int, read_bytes: int):
        file_object.seek(offset)
        files = {"file": (file_name, zlib.compress(file_object.read(read_bytes)))}
        ok, res = self.request_ssl("UPLOAD", "file/update_jedi_log", files=files)
        if not ok:
            return ok, res
        return res.get("success", False), res.get("message")

    # check_event_availability: data = {"job_id": PandaID, "jobset_id": jobsetID or jobParams["jobsetID"],
    #   "task_id": taskID}; request_ssl("GET", "event/get_available_event_range_count", data);
    #   not success -> (False, message); else (True, tmp_response.get("data"))
    def check_event_availability(self, panda_id: int, jobset_id: int, task_id: int):
        ok, res = self.request_ssl(
            "GET",
            "event/get_available_event_range_count",
            {"job_id": panda_id, "jobset_id": jobset_id, "task_id": task_id},
        )
        if not ok:
            return ok, res
        if not res.get("success", False):
            return False, res.get("message")
        return True, res.get("data", None)

    # send_dialog_messages: data = {"harvester_id": ..., "dialogs": [diag.convert_to_propagate(), ...]};
    #   request_ssl("POST", "harvester/add_dialogs", data); (success, message)
    def send_dialog_messages(self, dialogs: list[dict]):
        ok, res = self.request_ssl(
            "POST", "harvester/add_dialogs", {"harvester_id": self.harvester_id, "dialogs": dialogs}
        )
        if not ok:
            return ok, res
        return res.get("success", False), res.get("message")

    # update_service_metrics: data = {"harvester_id": ..., "metrics": service_metrics_list};
    #   request_ssl("POST", "harvester/update_service_metrics", data); (success, message)
    def update_service_metrics(self, metrics: list):
        ok, res = self.request_ssl(
            "POST", "harvester/update_service_metrics", {"harvester_id": self.harvester_id, "metrics": metrics}
        )
        if not ok:
            return ok, res
        return res.get("success", False), res.get("message")

    # get_max_worker_id: data = {"harvester_id": ...}; request_ssl("GET", "harvester/get_current_worker_id", data);
    #   ret_value = data if data is not None else message; (success, ret_value)
    def get_max_worker_id(self):
        ok, res = self.request_ssl("GET", "harvester/get_current_worker_id", {"harvester_id": self.harvester_id})
        if not ok:
            return ok, None
        data = res.get("data")
        return res.get("success", False), data if data is not None else res.get("message")

    # get_worker_stats_from_panda: request_ssl("GET", "harvester/get_worker_statistics", {});
    #   stats = tmp_response.get("data", {}); not success -> ({}, message); else (stats, "OK")
    def get_worker_stats_from_panda(self):
        ok, res = self.request_ssl("GET", "harvester/get_worker_statistics", {})
        if not ok:
            return {}, res
        if not res.get("success", False):
            return {}, res.get("message")
        return res.get("data", {}), "OK"

    # Not reproduced: upload_checkpoint / download_checkpoint / clear_checkpoint go to the job's own sourceURL (an
    # HPO checkpoint store), never to the central service.
